"""The Celery application both sides share: the coordinator enqueues chunk ids, worker nodes send them.

Settings chosen for this job (the README explains each): a chunk is acknowledged only after
its results and done-mark are committed (``task_acks_late``), and goes back to the queue if
the process sending it dies (``task_reject_on_worker_lost``); a node takes one chunk per free
slot, not a stock of them (``worker_prefetch_multiplier=1``); a chunk a whole node took down
with it is delivered again after the visibility timeout, found by a restore sweep every
few seconds; no result backend (results are in the ledger). Only ids travel: never a
payload, a header or a secret; with tracing on, also the run span's W3C ``traceparent`` in the
task headers (:mod:`engine.tracing`), so a node's chunk span continues the coordinator's trace.
"""

from __future__ import annotations

import redis
from celery import Celery
from celery.signals import before_task_publish

from engine import tracing

#: The task a node runs per chunk.
SEND_CHUNK = "engine.send_chunk"
#: Seconds before an unacknowledged chunk (its node is gone) is delivered again. At least 5 × a
#: chunk's p99: 100 rows of 30-s attempts with retries fit in well under a minute.
VISIBILITY_TIMEOUT = 300
#: How often nodes look for chunks whose visibility timeout has passed (s).
RESTORE_SWEEP = 2


def make_app(broker: str, visibility_timeout: float = VISIBILITY_TIMEOUT) -> Celery:
    app = Celery("batch-engine", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": RESTORE_SWEEP,
            "unacked_restore_throttle": 1,
        },
    )
    return app


@before_task_publish.connect
def _carry_trace(headers: dict | None = None, **_: object) -> None:
    """Put the current span's context in the chunk task's headers (nothing when tracing is off)."""
    if headers is not None:
        tracing.inject(headers)


def redis_client(broker: str) -> redis.Redis:
    """A client of the broker's Redis for the run's shared state; a Redis that stops answering
    raises within seconds instead of hanging a node or the coordinator."""
    return redis.Redis.from_url(broker, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
