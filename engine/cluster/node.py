"""A worker node: a Celery worker whose threads each send one chunk at a time with their own CurlMulti.

Several chunk tasks run at once per node (``--chunks-in-flight``, Celery's thread pool), so a
slow request at one chunk's tail idles only that chunk's slots while the others go on. Each
thread keeps its own ledger connection and, per run, its own :class:`ChunkSender`; the
request is built from the run's stored settings and this node's environment (``${VAR}``
secrets never leave the node).
"""

from __future__ import annotations

import os
import socket
import threading

import redis

from engine.cluster.app import SEND_CHUNK, make_app
from engine.cluster.outage import PassSignals, SharedBreaker
from engine.cluster.pacing import NodePacer
from engine.config import RunSettings
from engine.delivery.chunk import ChunkSender
from engine.delivery.gate import Gate
from engine.delivery.transport import TransportOptions
from engine.ledger import Store, open_store

#: Deliveries of one chunk after which it is dead-lettered (its rows wait for a rerun).
MAX_DELIVERIES = 5


class Node:
    """What one node process knows: its ledger, its Redis, and per thread a connection and senders."""

    def __init__(self, db: str, broker: str):
        self.db = db
        self.redis = redis.Redis.from_url(broker)  # thread-safe: one connection pool for the node
        self.local = threading.local()

    def store(self) -> Store:
        if not hasattr(self.local, "store"):
            self.local.store = open_store(self.db, create=False)
            self.local.senders = {}
        return self.local.store

    def sender(self, run_id: str, pass_no: int) -> ChunkSender:
        """This thread's sender for a pass: its own CurlMulti, the pass's shared outage pause and rate."""
        if (run_id, pass_no) not in self.local.senders:
            settings = RunSettings.from_dict(self.store().get_run(run_id)["options"])
            gate = Gate(
                SharedBreaker(self.redis, run_id, pass_no, settings.breaker()),
                NodePacer(self.redis, run_id, settings.rate, settings.concurrency),
            )
            for old in self.local.senders.values():  # one pass at a time per thread: free the last one's sockets
                old.close()
            self.local.senders = {
                (run_id, pass_no): ChunkSender(
                    settings.request_spec(),
                    settings.id_field,
                    settings.policy(),
                    TransportOptions.for_run(settings),
                    settings.concurrency,
                    gate,
                )
            }
        return self.local.senders[run_id, pass_no]

    def send_chunk(self, run_id: str, chunk_id: int, pass_no: int) -> None:
        """Claim the chunk, send its rows, commit their results with its done-mark; the ack follows."""
        name = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        store = self.store()
        rows = store.claim_chunk(chunk_id, name, MAX_DELIVERIES)
        if rows is None:
            return
        signals = PassSignals(self.redis, run_id, pass_no)
        records = self.sender(run_id, pass_no).send(
            rows, heartbeat=lambda: store.renew_chunk(chunk_id, name), stopped=signals.stop_requested
        )
        store.finish_chunk(chunk_id, records)


def run_node(broker: str, db: str, chunks_in_flight: int, visibility_timeout: float) -> None:
    """Start a Celery worker for ``broker`` sending into the ledger ``db``; returns when it stops."""
    app = make_app(broker, visibility_timeout)
    node = Node(db, broker)
    node.store()  # a wrong --db is said now, not at the first chunk
    app.task(name=SEND_CHUNK, ignore_result=True)(node.send_chunk)
    app.worker_main(
        [
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(chunks_in_flight),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
