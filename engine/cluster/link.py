"""The broker's Redis seen from a node or a coordinator: calls that outlive a Redis restart.

While Redis is unreachable a call returns the caller's safe answer (wait, send nothing new)
instead of raising, so requests in flight still finish and are recorded in the ledger; once
Redis has been unreachable for ``bound`` seconds the caller gives up (nodes stop starting
requests, the coordinator ends the pass with its reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import redis
from kombu.exceptions import OperationalError

T = TypeVar("T")

#: What an unreachable broker raises, through redis-py or through kombu (Celery's messaging).
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OperationalError)


class RedisLink:
    """One Redis client and since when it has been unreachable (None: it answered last time)."""

    def __init__(self, client: redis.Redis, bound: float):
        self.client = client
        self.bound = bound
        self.down_since: float | None = None

    def call(self, fn: Callable[[], T], unreachable: T) -> T:
        """``fn()``, or ``unreachable`` while Redis cannot be reached."""
        try:
            answer = fn()
        except UNREACHABLE:
            if self.down_since is None:
                self.down_since = time.monotonic()
            return unreachable
        self.down_since = None
        return answer

    def gave_up(self) -> bool:
        """Unreachable for longer than ``bound`` seconds."""
        return self.down_since is not None and time.monotonic() - self.down_since > self.bound

    def describe(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
