"""Pool-wide state in shared memory: a frozen record of numbers, read without the lock, changed under it.

The admission controls (:mod:`~engine.delivery.breaker`, :mod:`~engine.delivery.ratelimit`) are
pure state machines over small frozen records; this module only *carries* such a record for every
worker process of the pool. Worker nodes carry the same records in Redis
(:mod:`engine.cluster.carrier`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound="Carried")


@dataclass(frozen=True)
class Carried:
    """A state record made of numbers (floats, ints, bools, int enums), so any carrier can hold it."""

    @classmethod
    def decode(cls: type[C], values: Sequence[float]) -> C:
        return cls(*map(float, values))

    def encode(self) -> list[float]:
        return [float(value) for value in self.__dict__.values()]  # the fields, in their order


S = TypeVar("S", bound=Carried)

#: One step of a state machine: from a state and the carrier's clock, an answer and the next state.
Step = Callable[[S, float], tuple[T, S]]


class SharedRecord(Generic[S]):
    """A :class:`Carried` record in a ``multiprocessing.Array('d')``; create it with :meth:`create`.

    Reading one aligned double is atomic, so a step is first tried on a snapshot read without the
    lock: when it would change nothing (the hot path: closed breaker, no rate) no lock is taken.
    Otherwise the step runs again under the lock, on the state as it is, and its result is written.
    The clock is the monotonic one: the same for every process of the pool. Each process keeps
    the last record it decoded, so the hot path (a state that did not change) builds nothing.
    """

    def __init__(self, shared, kind: type[S]):
        self.shared = shared
        self.kind = kind
        self.view = shared.get_obj()
        self.seen: tuple[list[float], S] | None = None  # the raw values last decoded, and their record

    @classmethod
    def create(cls, context, initial: S) -> SharedRecord[S]:
        return cls(context.Array("d", initial.encode()), type(initial))

    def read(self) -> S:
        """A snapshot (each field read atomically; consistent as a whole only under the lock)."""
        raw = self.view[:]
        if self.seen is None or self.seen[0] != raw:
            self.seen = (raw, self.kind.decode(raw))
        return self.seen[1]

    def step(self, step: Step[S, T]) -> T:
        """Run ``step`` on the state; store what it returns unless it is the same state."""
        seen = self.read()
        answer, after = step(seen, time.monotonic())
        if after is seen or after == seen:
            return answer
        with self.shared.get_lock():
            state = self.read()
            answer, after = step(state, time.monotonic())
            if after != state:
                self.view[:] = after.encode()
        return answer

    def __getstate__(self):  # sent to a worker: the shared array travels, its view is rebuilt there
        state = self.__dict__.copy()
        del state["view"]
        state["seen"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.view = self.shared.get_obj()
