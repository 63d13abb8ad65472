"""A pass sent through a broker: chunk ids go to Celery, worker nodes send and record, the coordinator watches.

The coordinator (a :class:`~engine.run.supervisor.PassSupervisor` around a :class:`BrokerPass`)
plans the pass's chunks in the ledger, enqueues their ids (never payloads or secrets), and then
only reads the ledger: progress, chunks done, chunks dead-lettered.
A chunk whose node went silent is queued again, but no sooner than an attempt its node
sent just before going silent would have timed out (its heartbeat + the node's stall
limit + ``--timeout`` + 1 s), so a request is never resent while it may be in progress.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from engine import __version__
from engine.cluster.app import SEND_CHUNK, make_app, redis_client
from engine.cluster.link import RedisLink
from engine.cluster.outage import PassSignals, SharedBreaker
from engine.cluster.roster import Roster
from engine.errors import LedgerError
from engine.ledger.lease import HEARTBEAT_INTERVAL, chunk_silent_for
from engine.ledger.store import ledger_unavailable
from engine.run.supervisor import PassSupervisor, PassTally
from engine.states import CHUNK_DEAD, CHUNK_QUEUED, CHUNK_RUNNING, FAILED, REJECTED, SUCCEEDED

#: How often the coordinator reads the ledger (s).
WATCH_INTERVAL = 0.5
#: The pass's figures (counts by state, attempts) are read again once the time since the last
#: read is this many times what that read took: each read scans the run's rows, a tenth of a
#: second at a million, so reading every look would take the ledger's server a core's fifth.
MEASURE_SPACING = 10
#: A chunk queued this long (s) that no node took, while the broker holds fewer messages than
#: there are such chunks, is enqueued again: its message was lost (Redis restarted empty).
#: A duplicate is harmless: the node that gets it second finds the chunk taken and refuses it.
LOST_AFTER = 10.0
#: Where kombu keeps a Redis broker's waiting messages (the default queue) and delivered, unacked ones.
QUEUE_KEY, UNACKED_KEY = "celery", "unacked"


class BrokerPass:
    """One pass of a run over worker nodes: chunks planned and enqueued, then watched in the ledger."""

    def __init__(self, supervisor: PassSupervisor, pass_no: int, states: tuple[str, ...], broker: str):
        self.supervisor, self.pass_no, self.states = supervisor, pass_no, states
        self.ledger, self.run_id, self.settings = supervisor.ledger, supervisor.run_id, supervisor.settings
        self.app = make_app(broker)
        self.link = RedisLink(redis_client(broker), self.settings.max_pause)
        self.signals = PassSignals(self.link, self.run_id, pass_no)
        self.breaker = SharedBreaker(self.link, self.run_id, pass_no, self.settings.breaker())
        self.told_nodes = False
        self.before: dict[str, int] = {}  # the run's counts when the pass began
        self.attempts_before = 0
        self.counts: dict[str, int] = {}  # the pass's chunks by state, at the last look
        self.latest = PassTally()  # the pass's figures, at the last look
        self.measure_after = 0.0  # monotonic time of the next read of them
        self.silent_for = chunk_silent_for(self.settings.stall_timeout, self.settings.timeout)
        self.ledger_down_since: float | None = None
        self.roster = Roster(self.link.client)
        self.ledger_identity = self.ledger.ledger_id()
        self.refused: dict[str, str] = {}  # node name → why it refuses this pass's chunks

    # -- the Distribution protocol ------------------------------------------------------------

    def start(self) -> bool:
        """Wait out an earlier pass's requests, then plan this pass's chunks and enqueue them."""
        self.before = self.ledger.counts(self.run_id)
        self.attempts_before = self.ledger.row_totals(self.run_id).attempts
        if not self._wait_out_hold():
            return False
        for chunk_id in self.ledger.plan_chunks(self.run_id, self.pass_no, self.states, self.settings.chunks):
            self._enqueue(chunk_id)
        return True

    def step(self) -> None:
        time.sleep(WATCH_INTERVAL)
        self.counts = self.ledger.chunk_counts(self.run_id, self.pass_no)
        if self.finished() or time.monotonic() >= self.measure_after:
            started = time.monotonic()
            self.latest = self._measure()  # read once per look: progress and the kill switch share it
            self.measure_after = started + MEASURE_SPACING * (time.monotonic() - started)
            self.supervisor.progress.update(self.latest)

    def finished(self) -> bool:
        return self.counts[CHUNK_QUEUED] + self.counts[CHUNK_RUNNING] == 0  # nothing of it in flight anywhere

    def outage_since(self) -> float | None:
        return self.breaker.outage_since()

    def watch(self) -> None:
        """The broker, refusing nodes, and chunks that went silent or whose message was lost."""
        self._watch_broker()
        self._watch_refusals()
        if not self.supervisor.stopping:
            for chunk_id in self.ledger.silent_chunks(self.run_id, self.pass_no, self.silent_for):
                self.supervisor.events.emit("chunk_requeued", run_id=self.run_id, chunk=chunk_id)
                self._enqueue(chunk_id)
            self._enqueue_lost(self.counts[CHUNK_QUEUED])

    def hold_back(self, paused: bool) -> None:
        """An operator's pause reaches every node through the pass's breaker in Redis."""
        if paused != self.breaker.held():
            self.breaker.hold(paused)

    def drain(self) -> None:
        """Every node stops starting requests and records what is in flight."""
        self.told_nodes = self.signals.request_stop()

    def drained(self) -> bool:
        return False  # the nodes say nothing when they are done: the chunks' states do

    @contextlib.contextmanager
    def outlast(self) -> Iterator[None]:
        """The ledger's server went away (restarted): the nodes keep their results until it is back;
        the pass waits for it up to ``--max-pause``, then fails with the ledger's error."""
        try:
            yield
        except Exception as err:
            if not self.ledger.connection_lost(err):
                raise
            if not self._ledger_back():
                raise ledger_unavailable(
                    self.ledger.location, f"could not be reached for {self.settings.max_pause:.0f} s (--max-pause)"
                ) from None
        else:
            self.ledger_down_since = None

    def end(self, complete: bool) -> bool:
        """Chunks delivered too many times were set aside: the pass says so."""
        dead = self.counts.get(CHUNK_DEAD, 0)
        if dead and self.supervisor.gave_up is None:
            self.supervisor.give_up(
                f"{dead} chunks were delivered too many times and set aside (dead-lettered);"
                " their rows wait for a rerun"
            )
            self.supervisor.events.emit("chunks_dead", run_id=self.run_id, chunks=dead)
        return complete

    def tally(self) -> PassTally:
        """This pass's figures at the last look."""
        return self.latest

    def _measure(self) -> PassTally:
        """This pass's figures, from the ledger: what the nodes recorded since it began."""
        now = self.ledger.counts(self.run_id)
        succeeded = now[SUCCEEDED] - self.before[SUCCEEDED]
        finished = sum(now[state] - self.before[state] for state in now if state not in self.states)
        return PassTally(
            attempts=self.ledger.row_totals(self.run_id).attempts - self.attempts_before,
            succeeded=succeeded,
            not_succeeded=max(0, finished - succeeded),
            refused=sum(now[state] - self.before[state] for state in (REJECTED, FAILED) if state not in self.states),
        )

    # -- distribution -------------------------------------------------------------------------

    def _watch_refusals(self) -> None:
        """Name each node that refuses this pass's chunks, and why, as soon as it does; when every live
        node refuses, nobody will send them: the pass ends, with their reasons."""
        refusals: dict[str, str] = self.link.call(lambda: self.roster.refusals(self.run_id, self.pass_no), {})
        for node, why in refusals.items():
            if node not in self.refused:
                self.refused[node] = why
                self.supervisor.progress.alert(f"node {node} refuses this run's chunks: {why}")
                self.supervisor.events.emit("node_refused", run_id=self.run_id, node=node, reason=why)
        if not refusals or self.supervisor.stopping:
            return
        live: dict[str, dict] = self.link.call(self.roster.live, {})
        if live and set(live) <= set(refusals):
            reasons = "; ".join(f"node {node}: {refusals[node]}" for node in sorted(live))
            self.supervisor.give_up(f"no live node can send this run's chunks ({reasons})")
            self.supervisor.events.emit("no_node_can_send", run_id=self.run_id, nodes=sorted(live))
            if not self.counts[CHUNK_RUNNING]:  # nothing in flight anywhere: nothing to wait for
                self.supervisor.stop_now()

    def _ledger_back(self) -> bool:
        """Wait for the ledger's server while ``--max-pause`` allows; False: give up."""
        if self.ledger_down_since is None:
            self.ledger_down_since = time.monotonic()
            self.supervisor.events.emit("ledger_unreachable", run_id=self.run_id)
        self.supervisor.progress.note("the ledger cannot be reached; waiting")
        if self.supervisor.stop.count >= 2 or time.monotonic() - self.ledger_down_since > self.settings.max_pause:
            return False
        try:
            self.ledger.reconnect()
        except LedgerError:
            pass
        return True

    def _watch_broker(self) -> None:
        """Say when the broker cannot be reached; past ``--max-pause`` the pass ends (the nodes stop
        on their own after as long); a stop the nodes could not be told yet is told again."""
        if self.supervisor.stopping and not self.told_nodes:
            self.told_nodes = self.signals.request_stop()
        if self.link.down_since is not None:
            self.link.call(self.link.client.ping, False)
        if self.link.down_since is not None:
            self.supervisor.progress.note(f"the broker {self.link.describe()} cannot be reached; waiting")
        if self.link.gave_up() and not self.supervisor.stopping:
            self.supervisor.give_up(
                f"the broker {self.link.describe()} could not be reached for {self.settings.max_pause:.0f} s"
                " (--max-pause); its chunks wait for a rerun"
            )
            self.supervisor.events.emit("broker_unreachable", run_id=self.run_id)

    def _enqueue_lost(self, queued: int) -> None:
        """Chunks whose broker message was lost (Redis restarted without it) are enqueued again."""
        if not queued:
            return
        client = self.link.client
        held = self.link.call(lambda: client.llen(QUEUE_KEY) + client.hlen(UNACKED_KEY), None)
        if held is None or held >= queued:
            return
        for chunk_id in self.ledger.waiting_chunks(self.run_id, self.pass_no, LOST_AFTER):
            self.supervisor.events.emit("chunk_requeued", run_id=self.run_id, chunk=chunk_id, why="broker lost it")
            self._enqueue(chunk_id)

    def _wait_out_hold(self) -> bool:
        """An earlier pass died with requests that may be in progress: send nothing before they time out."""
        supervisor, hold = self.supervisor, self.supervisor.hold
        while hold is not None and time.time() < hold.until:
            if supervisor.stop.count:
                return False
            supervisor.progress.note("waiting for the requests of a pass that died to time out")
            supervisor.renew()
            time.sleep(min(HEARTBEAT_INTERVAL, max(0.0, hold.until - time.time())))
        return True

    def _enqueue(self, chunk_id: int) -> None:
        """Send the chunk's id to the nodes; while the broker is unreachable the chunk stays queued in
        the ledger and is enqueued again once it is back (:meth:`_enqueue_lost`)."""
        if self.link.down_since is not None:
            return
        self.link.call(
            lambda: self.app.send_task(
                SEND_CHUNK,
                args=[self.run_id, chunk_id, self.pass_no],
                kwargs={"ledger": self.ledger_identity, "version": __version__},  # ids only: never a payload
                retry_policy={"max_retries": 1},
            ),
            None,
        )
