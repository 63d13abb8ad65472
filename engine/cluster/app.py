"""The Celery application both sides share: the coordinator enqueues chunk ids, worker nodes send them.

Settings chosen for this job (the README explains each): a chunk is acknowledged only after
its results and done-mark are committed (``task_acks_late``), and goes back to the queue if
the process sending it dies (``task_reject_on_worker_lost``); a node takes one chunk per free
slot, not a stock of them (``worker_prefetch_multiplier=1``); a chunk a whole node took down
with it is delivered again after the visibility timeout, found by a restore sweep every
few seconds; no result backend (results are in the ledger). Only ids travel: never a
payload, a header or a secret.
"""

from __future__ import annotations

import redis
from celery import Celery

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


def redis_client(broker: str) -> redis.Redis:
    """A client of the broker's Redis for the run's shared state; a Redis that stops answering
    raises within seconds instead of hanging a node or the coordinator."""
    return redis.Redis.from_url(broker, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
