"""A worker node: a Celery worker whose pool processes each send one chunk at a time with their own CurlMulti.

Several chunk tasks run at once per node (``--chunks-in-flight`` pool processes, Celery's
prefork pool, so a node uses every core), and a slow request at one chunk's tail idles only
that chunk's slots while the others go on. A pool process that dies has its chunk given back
to the queue at once (``task_reject_on_worker_lost``). Each process keeps its own ledger
connection and, per pass, its own :class:`ChunkSender`; the request is built from the run's
stored settings and this node's environment (``${VAR}`` secrets never leave the node).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from engine.cluster.app import SEND_CHUNK, make_app, redis_client
from engine.cluster.link import RedisLink
from engine.cluster.outage import PassSignals, SharedBreaker
from engine.cluster.pacing import NodePacer
from engine.config import RunSettings
from engine.delivery.chunk import ChunkSender
from engine.delivery.gate import Gate
from engine.delivery.transport import TransportOptions
from engine.errors import LedgerError
from engine.ledger import Store, open_store

#: Deliveries of one chunk after which it is dead-lettered (its rows wait for a rerun).
MAX_DELIVERIES = 5
#: How long a node tries to reach a ledger that went away (restarted) before giving up (s).
LEDGER_PATIENCE = 300.0

T = TypeVar("T")


class Node:
    """What one pool process knows: its ledger connection, its Redis, and its sender for the current pass."""

    def __init__(self, db: str, broker: str):
        self.db = db
        self.node_pid = os.getpid()  # the Celery worker's main process; its pool processes fork from it
        self.redis = redis_client(broker)
        self._store: Store | None = None
        self._pass: tuple[str, int] | None = None
        self._sender: ChunkSender | None = None
        self._signals: PassSignals | None = None

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
        return isinstance(error, LedgerError) or (self._store is not None and self._store.connection_lost(error))

    def sender(self, run_id: str, pass_no: int) -> tuple[ChunkSender, PassSignals]:
        """This process's sender for a pass (its own CurlMulti, the pass's shared outage pause and
        rate) and the pass's stop flag."""
        if self._pass != (run_id, pass_no) or self._sender is None or self._signals is None:
            settings = RunSettings.from_dict(self.with_ledger(lambda store: store.get_run(run_id))["options"])
            link = RedisLink(self.redis, settings.max_pause)
            gate = Gate(
                SharedBreaker(link, run_id, pass_no, settings.breaker()),
                NodePacer(link, run_id, settings.rate, settings.concurrency),
            )
            if self._sender is not None:  # one pass at a time per process: free the last one's sockets
                self._sender.close()
            self._sender = ChunkSender(
                settings.request_spec(),
                settings.id_field,
                settings.policy(),
                TransportOptions.for_run(settings),
                settings.concurrency,
                gate,
            )
            self._signals = PassSignals(link, run_id, pass_no)
            self._pass = (run_id, pass_no)
        return self._sender, self._signals

    def send_chunk(self, run_id: str, chunk_id: int, pass_no: int) -> None:
        """Claim the chunk, send its rows, commit their results with its done-mark; the ack follows."""
        name = f"{socket.gethostname()}:{self.node_pid}:{os.getpid()}"
        rows = self.with_ledger(lambda store: store.claim_chunk(chunk_id, name, MAX_DELIVERIES))
        if rows is None:
            return
        sender, signals = self.sender(run_id, pass_no)
        records = sender.send(rows, heartbeat=lambda: self._renew(chunk_id, name), stopped=signals.stop_requested)
        self.with_ledger(lambda store: store.finish_chunk(chunk_id, records))

    def _renew(self, chunk_id: int, name: str) -> None:
        """The chunk's heartbeat; while the ledger is unreachable sending goes on (the results wait)."""
        try:
            self.store().renew_chunk(chunk_id, name)
        except Exception as err:
            if not self._ledger_gone(err):
                raise
            self.forget_store()


def run_node(broker: str, db: str, chunks_in_flight: int, visibility_timeout: float) -> None:
    """Start a Celery worker for ``broker`` sending into the ledger ``db``; returns when it stops."""
    app = make_app(broker, visibility_timeout)
    node = Node(db, broker)
    node.store()  # a wrong --db is said now, not at the first chunk
    node.forget_store()  # pool processes open their own
    app.task(name=SEND_CHUNK, ignore_result=True)(node.send_chunk)
    app.worker_main(
        [
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(chunks_in_flight),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
