"""A state machine's record in Redis, for all worker nodes together: the Redis twin of
:class:`~engine.delivery.shared.SharedRecord`.

The record is one hash (a field per dataclass field). A step is first tried on a snapshot (one
round trip: the hash and Redis's clock): when it would change nothing, that is the answer.
Otherwise it runs again inside a WATCH/MULTI transaction, so two nodes never both take the same
probe or overwrite each other's counts; a write by anyone else in between (another node's step,
a Lua script on the same hash) makes the transaction start over. The clock is Redis's, so nodes
whose clocks differ still share one timeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Generic, TypeVar

import redis

from engine.cluster.link import RedisLink
from engine.delivery.shared import Carried

S = TypeVar("S", bound=Carried)
T = TypeVar("T")

#: How often a step starts over when other nodes keep changing the record, before it gives up.
TRIES = 20


class Contended(Exception):
    """Other nodes changed the record :data:`TRIES` times in a row during one step."""


class RedisRecord(Generic[S]):
    """A :class:`~engine.delivery.shared.Carried` record in the hash ``key``, kept ``ttl`` seconds
    after its last change; ``initial(now)`` is the state of a hash that does not exist (yet)."""

    def __init__(self, link: RedisLink, key: str, initial: Callable[[float], S], ttl: int):
        self.link, self.key, self.initial, self.ttl = link, key, initial, ttl
        self.names = [field.name for field in fields(initial(0.0))]

    def read(self) -> tuple[S, float]:
        """The state and Redis's clock, in one round trip (raises while Redis is unreachable)."""
        pipe = self.link.client.pipeline(transaction=False)
        pipe.hgetall(self.key)
        pipe.time()
        stored, clock = pipe.execute()
        now = _seconds(clock)
        return self._decode(stored, now), now

    def step(self, step: Callable[[S, float], tuple[T, S]], unreachable: T) -> T:
        """Run ``step`` on the state at Redis's ``now``; store what it returns unless it is the same state.
        ``unreachable`` while Redis cannot be reached, or other nodes keep changing the record."""

        def run() -> T:
            state, now = self.read()
            answer, after = step(state, now)
            return answer if after == state else self._transact(step)

        try:
            return self.link.call(run, unreachable)
        except Contended:
            return unreachable

    def _transact(self, step: Callable[[S, float], tuple[T, S]]) -> T:
        with self.link.client.pipeline() as pipe:
            for _ in range(TRIES):
                try:
                    pipe.watch(self.key)
                    now = _seconds(pipe.time())
                    state = self._decode(pipe.hgetall(self.key), now)
                    answer, after = step(state, now)
                    if after == state:
                        return answer  # leaving the ``with`` unwatches
                    pipe.multi()
                    pipe.hset(self.key, mapping=dict(zip(self.names, after.encode(), strict=True)))
                    pipe.expire(self.key, self.ttl)
                    pipe.execute()
                    return answer
                except redis.WatchError:
                    continue
        raise Contended(self.key)

    def _decode(self, stored: dict, now: float) -> S:
        """The hash's fields, those it lacks from the initial state (a Lua script may have written only one)."""
        defaults = self.initial(now)
        values = {key.decode() if isinstance(key, bytes) else key: float(value) for key, value in stored.items()}
        return type(defaults).decode(
            [values.get(name, default) for name, default in zip(self.names, defaults.encode(), strict=True)]
        )


def _seconds(clock: tuple[int, int]) -> float:
    """Redis ``TIME`` (seconds, microseconds) as seconds."""
    return clock[0] + clock[1] / 1_000_000
