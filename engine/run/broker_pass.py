"""A pass sent through a broker: chunk ids go to Celery, worker nodes send and record, the coordinator watches.

The coordinator plans the pass's chunks in the ledger, enqueues their ids (never payloads
or secrets), and then only reads the ledger: progress, chunks done, chunks dead-lettered.
A chunk whose node went silent is queued again, but no sooner than an attempt its node
sent just before going silent would have timed out (its heartbeat + the node's stall
limit + ``--timeout`` + 1 s), so a request is never resent while it may be in progress.
"""

from __future__ import annotations

import time

from engine import __version__
from engine.cluster.app import SEND_CHUNK, make_app, redis_client
from engine.cluster.link import RedisLink
from engine.cluster.outage import PassSignals, SharedBreaker
from engine.cluster.roster import Roster
from engine.config import RunSettings
from engine.errors import LedgerError
from engine.ledger import Store
from engine.ledger.lease import HEARTBEAT_INTERVAL, Hold, Holder, chunk_silent_for
from engine.ledger.store import ledger_unavailable
from engine.output.events import EventLog
from engine.output.progress import Progress
from engine.run.passes import DRAIN_GRACE, PassTally
from engine.run.pause import OperatorPause, PauseClock, PausePeriods
from engine.run.signals import StopRequest
from engine.states import CHUNK_DEAD, CHUNK_QUEUED, CHUNK_RUNNING, SUCCEEDED

#: How often the coordinator reads the ledger (s).
WATCH_INTERVAL = 0.5
#: A chunk queued this long (s) that no node took, while the broker holds fewer messages than
#: there are such chunks, is enqueued again: its message was lost (Redis restarted empty).
#: A duplicate is harmless: the node that gets it second finds the chunk taken and refuses it.
LOST_AFTER = 10.0
#: Where kombu keeps a Redis broker's waiting messages (the default queue) and delivered, unacked ones.
QUEUE_KEY, UNACKED_KEY = "celery", "unacked"


class BrokerPass:
    """One pass of a run over worker nodes; same ending fields as a local :class:`~engine.run.passes.Pass`."""

    def __init__(
        self,
        ledger: Store,
        run_id: str,
        pass_no: int,
        settings: RunSettings,
        states: tuple[str, ...],
        broker: str,
        *,
        progress: Progress,
        events: EventLog,
        stop: StopRequest,
        holder: Holder,
        hold: Hold | None = None,
    ):
        self.ledger, self.run_id, self.pass_no, self.settings = ledger, run_id, pass_no, settings
        self.states = states
        self.app = make_app(broker)
        self.link = RedisLink(redis_client(broker), settings.max_pause)
        self.signals = PassSignals(self.link, run_id, pass_no)
        self.breaker = SharedBreaker(self.link, run_id, pass_no, settings.breaker())
        self.told_nodes = False
        self.stop_at: float | None = None  # the nodes were told to stop; wait for them until then
        periods = PausePeriods(ledger, run_id)
        self.pause = PauseClock(settings.max_pause, periods)
        self.operator = OperatorPause(ledger, run_id, periods)
        self.progress, self.events, self.stop, self.holder = progress, events, stop, holder
        self.attempts_before = 0
        self.hold = hold
        self.interrupted = False
        self.gave_up: str | None = None
        self.clean = False
        self.dead_chunks = 0
        self.silent_for = 0.0
        self.beat = 0.0
        self.ledger_down_since: float | None = None
        self.roster = Roster(self.link.client)
        self.ledger_identity = ledger.ledger_id()
        self.refused: dict[str, str] = {}  # node name → why it refuses this pass's chunks

    def run(self) -> PassTally:
        before = self.ledger.counts(self.run_id)
        self.attempts_before = self.ledger.attempt_count(self.run_id)
        if not self._wait_out_hold():
            self.interrupted = True
            return self._tally(before)
        for chunk_id in self.ledger.plan_chunks(self.run_id, self.pass_no, self.states, self.settings.chunks):
            self._enqueue(chunk_id)
        self.silent_for = chunk_silent_for(self.settings.stall_timeout, self.settings.timeout)
        while True:
            try:
                counts = self.ledger.chunk_counts(self.run_id, self.pass_no)
                if self._watch(counts, before):
                    break
                self.ledger_down_since = None
            except Exception as err:
                if not self.ledger.connection_lost(err):
                    raise
                if not self._ledger_back():
                    raise ledger_unavailable(
                        self.ledger.location, f"could not be reached for {self.settings.max_pause:.0f} s (--max-pause)"
                    ) from None
            time.sleep(WATCH_INTERVAL)
        self.dead_chunks = counts[CHUNK_DEAD]
        if self.dead_chunks and not self.gave_up:
            self.gave_up = (
                f"{self.dead_chunks} chunks were delivered too many times and set aside (dead-lettered);"
                " their rows wait for a rerun"
            )
            self.events.emit("chunks_dead", run_id=self.run_id, chunks=self.dead_chunks)
        return self._tally(before)

    def _watch(self, counts: dict[str, int], before: dict[str, int]) -> bool:
        """One look at the pass: progress, stop, outage, broker, silent and lost chunks; True when it is over."""
        self.progress.update(self._tally(before))
        if counts[CHUNK_QUEUED] + counts[CHUNK_RUNNING] == 0:
            self.clean = True  # nothing of this pass is in flight anywhere
            return True
        if self._stopping_done():
            return True
        self._watch_outage()
        self._watch_broker()
        self._watch_operator()
        self._watch_refusals(counts)
        if self.stop_at is None:
            for chunk_id in self.ledger.silent_chunks(self.run_id, self.pass_no, self.silent_for):
                self.events.emit("chunk_requeued", run_id=self.run_id, chunk=chunk_id)
                self._enqueue(chunk_id)
            self._enqueue_lost(counts[CHUNK_QUEUED])
        if time.monotonic() - self.beat >= HEARTBEAT_INTERVAL:
            self.ledger.renew_lease(self.run_id, self.holder)
            self.beat = time.monotonic()
        return False

    def _watch_refusals(self, counts: dict[str, int]) -> None:
        """Name each node that refuses this pass's chunks, and why, as soon as it does; when every live
        node refuses, nobody will send them: the pass ends, with their reasons."""
        refusals: dict[str, str] = self.link.call(lambda: self.roster.refusals(self.run_id, self.pass_no), {})
        for node, why in refusals.items():
            if node not in self.refused:
                self.refused[node] = why
                self.progress.alert(f"node {node} refuses this run's chunks: {why}")
                self.events.emit("node_refused", run_id=self.run_id, node=node, reason=why)
        if not refusals or self.stop_at is not None:
            return
        live: dict[str, dict] = self.link.call(self.roster.live, {})
        if live and set(live) <= set(refusals):
            reasons = "; ".join(f"node {node}: {refusals[node]}" for node in sorted(live))
            self.gave_up = f"no live node can send this run's chunks ({reasons})"
            self.events.emit("no_node_can_send", run_id=self.run_id, nodes=sorted(live))
            self._stop_nodes()
            if not counts[CHUNK_RUNNING]:  # nothing in flight anywhere: nothing to wait for
                self.stop_at = time.monotonic()

    def _watch_operator(self) -> None:
        """An operator's pause reaches every node through the pass's breaker in Redis."""
        if self.operator.check(self._say) != self.breaker.held():
            self.breaker.hold(self.operator.paused)

    def _ledger_back(self) -> bool:
        """The ledger's server went away (restarted): the nodes keep their results until it is back;
        wait for it up to ``--max-pause``. False: give up (the caller raises the ledger's error)."""
        if self.ledger_down_since is None:
            self.ledger_down_since = time.monotonic()
            self.events.emit("ledger_unreachable", run_id=self.run_id)
        self.progress.note("the ledger cannot be reached; waiting")
        if self.stop.count >= 2 or time.monotonic() - self.ledger_down_since > self.settings.max_pause:
            return False
        try:
            self.ledger.reconnect()
        except LedgerError:
            pass
        return True

    def _stopping_done(self) -> bool:
        """Ctrl-C: every node stops starting requests and records what is in flight; a second one leaves now."""
        if self.stop.count and self.stop_at is None:
            self.interrupted = True
            self._stop_nodes()
        if self.stop.count >= 2:
            return True
        return self.stop_at is not None and time.monotonic() > self.stop_at

    def _stop_nodes(self) -> None:
        self.told_nodes = self.signals.request_stop()
        self.stop_at = time.monotonic() + self.settings.timeout + DRAIN_GRACE

    def _watch_broker(self) -> None:
        """Say when the broker cannot be reached; past ``--max-pause`` the pass ends (the nodes stop
        on their own after as long); a stop the nodes could not be told yet is told again."""
        if self.stop_at is not None and not self.told_nodes:
            self.told_nodes = self.signals.request_stop()
        if self.link.down_since is not None:
            self.link.call(self.link.client.ping, False)
        if self.link.down_since is not None:
            self.progress.note(f"the broker {self.link.describe()} cannot be reached; waiting")
        if self.link.gave_up() and self.stop_at is None:
            self.gave_up = (
                f"the broker {self.link.describe()} could not be reached for {self.settings.max_pause:.0f} s"
                " (--max-pause); its chunks wait for a rerun"
            )
            self.events.emit("broker_unreachable", run_id=self.run_id)
            self._stop_nodes()

    def _enqueue_lost(self, queued: int) -> None:
        """Chunks whose broker message was lost (Redis restarted without it) are enqueued again."""
        if not queued:
            return
        client = self.link.client
        held = self.link.call(lambda: client.llen(QUEUE_KEY) + client.hlen(UNACKED_KEY), None)
        if held is None or held >= queued:
            return
        for chunk_id in self.ledger.waiting_chunks(self.run_id, self.pass_no, LOST_AFTER):
            self.events.emit("chunk_requeued", run_id=self.run_id, chunk=chunk_id, why="broker lost it")
            self._enqueue(chunk_id)

    def _watch_outage(self) -> None:
        """Say when the nodes pause because the endpoint is down, and when they resume; bound the pause."""
        reason = self.pause.observe(self.breaker.outage_since(), self._say)
        if reason and self.stop_at is None:
            self.gave_up = reason
            self._stop_nodes()

    def _say(self, note: str, event: str, **fields) -> None:
        self.progress.note(note)
        self.events.emit(event, run_id=self.run_id, **fields)

    def _wait_out_hold(self) -> bool:
        """An earlier pass died with requests that may be in progress: send nothing before they time out."""
        while self.hold is not None and time.time() < self.hold.until:
            if self.stop.count:
                return False
            self.progress.note("waiting for the requests of a pass that died to time out")
            self.ledger.renew_lease(self.run_id, self.holder)
            time.sleep(min(HEARTBEAT_INTERVAL, max(0.0, self.hold.until - time.time())))
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

    def _tally(self, before: dict[str, int]) -> PassTally:
        """This pass's figures, from the ledger: what the nodes recorded since it began."""
        now = self.ledger.counts(self.run_id)
        succeeded = now[SUCCEEDED] - before[SUCCEEDED]
        finished = sum(now[state] - before[state] for state in now if state not in self.states)
        return PassTally(
            attempts=self.ledger.attempt_count(self.run_id) - self.attempts_before,
            succeeded=succeeded,
            not_succeeded=max(0, finished - succeeded),
        )
