"""A worker node: a Celery worker whose pool processes each send one chunk at a time with their own CurlMulti.

Several chunk tasks run at once per node (``--chunks-in-flight`` pool processes, Celery's
prefork pool, so a node uses every core), and a slow request at one chunk's tail idles only
that chunk's slots while the others go on. A pool process that dies has its chunk given back
to the queue at once (``task_reject_on_worker_lost``). Each process keeps its own ledger
connection and, per pass, its own :class:`~engine.delivery.sender.Sender` (the start loop the
local workers run too); the request is built from the run's
stored settings and this node's environment (``${VAR}`` secrets never leave the node). A node
fetches its own OAuth2 token, shared by its pool processes.

A claim is fenced (:mod:`engine.ledger.claim`, :class:`~engine.delivery.fence.Fence`): rows
start only while the claim was renewed within the lease by this node's own clock, so a node
frozen past it sends nothing another node now owns. A node that cannot serve a pass (a
variable it lacks, another ledger, another version) refuses its chunks unclaimed and says
why (:mod:`engine.cluster.roster`); the main process announces the node every few seconds.

Each chunk gets one log line (logger ``engine.cluster.node``): claimed, done, refused, and why,
each record carrying its ``run_id``, ``chunk`` and ``node`` (fields of a JSON log line); the
``worker`` command chooses where the lines go. With tracing on, a chunk is a span, child of the
coordinator's run span carried in the task's headers (:mod:`engine.tracing`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from celery import Celery

from engine import __version__, tracing
from engine.auth.tokens import SharedToken
from engine.cluster.app import SEND_CHUNK, make_app, redis_client
from engine.cluster.link import UNREACHABLE, RedisLink
from engine.cluster.outage import PassSignals, SharedBreaker
from engine.cluster.pacing import NodePacer
from engine.cluster.roster import NodeCard, Roster, keep_announcing
from engine.config import RunSettings
from engine.delivery.fence import Fence
from engine.delivery.gate import Gate
from engine.delivery.sender import Sender
from engine.errors import LedgerError, UnknownRun, UsageError
from engine.ledger import Store, open_store
from engine.ledger.claim import ChunkClaim
from engine.ledger.lease import chunk_silent_for
from engine.wire import OUTCOME

#: Deliveries of one chunk after which it is dead-lettered (its rows wait for a rerun).
MAX_DELIVERIES = 5
#: How long a node tries to reach a ledger that went away (restarted) before giving up (s).
LEDGER_PATIENCE = 300.0
#: How long a node waits before putting back a chunk it refused (s): the nodes that can serve it take it first.
REFUSE_PAUSE = 1.0
#: How many times a refused chunk is put back before it is let go (its message; the ledger keeps it queued).
MAX_BOUNCES = 300

T = TypeVar("T")

log = logging.getLogger(__name__)


class Node:
    """What one pool process knows: its ledger connection, its Redis, and its sender for the current pass."""

    def __init__(self, db: str, broker: str, app: Celery, tokens: SharedToken | None = None):
        self.db = db
        self.tokens = tokens  # the node's OAuth2 access token, shared by its pool processes
        self.app = app
        self.node_pid = os.getpid()  # the Celery worker's main process; its pool processes fork from it
        self.redis = redis_client(broker)
        self._store: Store | None = None
        self._pass: tuple[str, int] | None = None
        self._sender: Sender | None = None
        self._signals: PassSignals | None = None
        self._lease = self._busy_for = 0.0
        self._refused: dict[tuple[str, int], str | None] = {}
        self._said: set[tuple[str, int]] = set()

    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.db, create=False)
        return self._store

    def forget_store(self) -> None:
        """Drop a connection the ledger's server broke (restarted); the next use opens a new one."""
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
        self._store = None

    def with_ledger(self, write: Callable[[Store], T]) -> T:
        """``write(store)``, again on a new connection while the ledger is unreachable, for up to
        :data:`LEDGER_PATIENCE` seconds (a chunk's results are in this process's memory only)."""
        give_up = time.monotonic() + LEDGER_PATIENCE
        while True:
            try:
                return write(self.store())
            except Exception as err:
                if not self._ledger_gone(err) or time.monotonic() > give_up:
                    raise
                self.forget_store()
                time.sleep(1)

    def _ledger_gone(self, error: Exception) -> bool:
        """The ledger cannot be opened, or its server broke the connection."""
        if isinstance(error, UnknownRun):  # the ledger answered: this run is not in it
            return False
        return isinstance(error, LedgerError) or (self._store is not None and self._store.connection_lost(error))

    def sender(self, run_id: str, pass_no: int) -> tuple[Sender, PassSignals]:
        """This process's sender for a pass (its own CurlMulti, the pass's shared outage pause and
        rate) and the pass's stop flag. UsageError when this node cannot build the run's request
        (a ``${VAR}`` it lacks, a file it does not have)."""
        if self._pass != (run_id, pass_no) or self._sender is None or self._signals is None:
            settings = RunSettings.from_dict(self.with_ledger(lambda store: store.get_run(run_id))["options"])
            link = RedisLink(self.redis, settings.max_pause)
            # the request spec is the first thing that needs this node's environment
            parts = settings.sender_parts(settings.request_spec())
            gate = Gate(
                SharedBreaker(link, run_id, pass_no, parts.breaker),
                NodePacer(link, run_id, parts.rate, parts.window),
            )
            if self._sender is not None:  # one pass at a time per process: free the last one's sockets
                self._sender.close()
            self._sender = Sender(parts, gate, tokens=self.tokens)
            self._signals = PassSignals(link, run_id, pass_no)
            self._lease = settings.stall_timeout
            self._busy_for = chunk_silent_for(settings.stall_timeout, settings.timeout)
            self._pass = (run_id, pass_no)
        return self._sender, self._signals

    def send_chunk(
        self,
        run_id: str,
        chunk_id: int,
        pass_no: int,
        ledger: str | None = None,
        version: str | None = None,
        bounces: int = 0,
    ) -> None:
        """Claim the chunk, send its rows while the claim holds, commit their results with its done-mark;
        the ack follows. A chunk this node cannot serve is refused before it is claimed."""
        reason = self.refusal(run_id, pass_no, ledger, version)
        if reason is not None:
            self.refuse(run_id, chunk_id, pass_no, reason, {"ledger": ledger, "version": version, "bounces": bounces})
            return
        with tracing.span("chunk", _task_trace(), run_id=run_id, chunk=chunk_id, node=self.name(), pass_no=pass_no):
            self._send_claimed(run_id, chunk_id, pass_no)

    def _send_claimed(self, run_id: str, chunk_id: int, pass_no: int) -> None:
        log = chunk_log(run_id, chunk_id, self.name())
        sender, signals = self.sender(run_id, pass_no)
        asked = time.monotonic()  # the lease runs from before the claim was asked for
        claim = self.with_ledger(lambda store: store.claim_chunk(chunk_id, self.name(), MAX_DELIVERIES, self._busy_for))
        if claim is None:
            log.info(
                "chunk %s of run %s: not claimed (done, taken by another node, or dead-lettered)", chunk_id, run_id
            )
            return
        tracing.annotate_current(rows=len(claim.rows))
        log.info("chunk %s of run %s: claimed, %d rows", chunk_id, run_id, len(claim.rows))
        fence = Fence(self._lease, lambda: self._renew(claim), renewed_at=asked)
        records = sender.send(claim.rows, fence=fence, stopped=signals.stop_requested)
        complete = not sender.dropped
        if not self.with_ledger(lambda store: store.finish_chunk(claim, records, complete=complete)):
            log.warning("chunk %s of run %s: another node took it over while this one was stalled;"
                        " its %d results are kept as superseded", chunk_id, run_id, len(records))  # fmt: skip
        elif not complete:
            log.warning("chunk %s of run %s: its claim could not be renewed in time;"
                        " %d rows left for another delivery", chunk_id, run_id, sender.dropped)  # fmt: skip
        else:
            log.info("chunk %s of run %s: done, %d attempts recorded", chunk_id, run_id, len(records))
        tracing.annotate_current(attempts=len(records), dropped=sender.dropped, **_outcomes(records))

    def name(self) -> str:
        """This pool process, as a chunk's holder names it: host, node pid, process pid."""
        return f"{socket.gethostname()}:{self.node_pid}:{os.getpid()}"

    def refusal(self, run_id: str, pass_no: int, ledger: str | None, version: str | None) -> str | None:
        """Why this node cannot serve the pass (None: it can); the answer is kept for the pass."""
        if (run_id, pass_no) not in self._refused:
            self._refused[(run_id, pass_no)] = self._why_not(run_id, pass_no, ledger, version)
        return self._refused[(run_id, pass_no)]

    def _why_not(self, run_id: str, pass_no: int, ledger: str | None, version: str | None) -> str | None:
        if version is not None and version != __version__:
            return f"it runs batch-engine {__version__}, the coordinator {version}"
        mine = self.with_ledger(lambda store: store.ledger_id())
        if ledger is not None and ledger != mine:
            return f"its --db {self.store().location} is another ledger than the run's (ledger id {mine}, not {ledger})"
        try:
            self.sender(run_id, pass_no)
        except UnknownRun:
            return f"its --db {self.store().location} has no run {run_id!r}"
        except UsageError as err:
            return str(err)
        return None

    def refuse(self, run_id: str, chunk_id: int, pass_no: int, reason: str, task: dict) -> None:
        """Say why (once per pass in this process's log, and in Redis for the coordinator), then put the
        chunk back in the queue unclaimed, for a node that can: no delivery is spent on it. A chunk
        that found no taker for :data:`MAX_BOUNCES` rounds, or whose pass is stopping, is let go: the
        ledger still has it queued, and a coordinator still watching enqueues it again."""
        node = f"{socket.gethostname()}:{self.node_pid}"
        log = chunk_log(run_id, chunk_id, node)
        if (run_id, pass_no) not in self._said:
            self._said.add((run_id, pass_no))
            log.warning("node %s refuses the chunks of run %s: %s", node, run_id, reason)
        else:
            log.info("chunk %s of run %s: refused (%s)", chunk_id, run_id, reason)
        with contextlib.suppress(*UNREACHABLE):
            Roster(self.redis).refuse(run_id, pass_no, node, reason)
        time.sleep(REFUSE_PAUSE)  # leaves the other nodes time to take the chunk first
        stopping = PassSignals(RedisLink(self.redis, LEDGER_PATIENCE), run_id, pass_no).stop_requested()
        if task["bounces"] < MAX_BOUNCES and not stopping:
            task = {**task, "bounces": task["bounces"] + 1}
            self.app.send_task(SEND_CHUNK, args=[run_id, chunk_id, pass_no], kwargs=task)

    def _renew(self, claim: ChunkClaim) -> bool | None:
        """The chunk's heartbeat: whether the claim is still this node's (None: the ledger is unreachable;
        the lease runs down, and what was sent waits in memory for it)."""
        try:
            return self.store().renew_chunk(claim)
        except Exception as err:
            if not self._ledger_gone(err):
                raise
            self.forget_store()
            return None


def chunk_log(run_id: str, chunk_id: int, node: str) -> logging.LoggerAdapter:
    """This module's logger with the chunk's fields on every record (the JSON log line's run_id, chunk, node)."""
    return logging.LoggerAdapter(log, {"run_id": run_id, "chunk": chunk_id, "node": node})


def _task_trace() -> dict[str, str]:
    """The trace context the running chunk task carried (empty when tracing is off)."""
    if not tracing.enabled():
        return {}
    from celery import current_task

    return tracing.carried(current_task.request) if current_task else {}


def _outcomes(records) -> dict[str, int]:
    """How many of a chunk's attempts ended in each outcome (a span's attributes)."""
    return dict(Counter(f"outcome.{record[OUTCOME]}" for record in records))


def run_node(broker: str, db: str, chunks_in_flight: int, visibility_timeout: float) -> None:
    """Start a Celery worker for ``broker`` sending into the ledger ``db``; returns when it stops."""
    app = make_app(broker, visibility_timeout)
    # made before the pool forks: its processes inherit it, and fetch one OAuth2 token for the node
    node = Node(db, broker, app, SharedToken.create(multiprocessing.get_context("fork")))
    card = NodeCard(
        socket.gethostname(), os.getpid(), __version__, node.store().ledger_id()
    )  # a wrong --db is said now
    node.forget_store()  # pool processes open their own
    keep_announcing(Roster(redis_client(broker)), card)
    app.task(name=SEND_CHUNK, ignore_result=True)(node.send_chunk)
    # the worker application itself, as `celery worker` makes it, without Celery's command line (its
    # click_repl and prompt_toolkit cost a quarter of a second at every node start)
    worker = app.Worker(
        pool_cls="prefork",
        concurrency=chunks_in_flight,
        loglevel="WARNING",
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
    )
    worker.start()
    raise SystemExit(worker.exitcode)
