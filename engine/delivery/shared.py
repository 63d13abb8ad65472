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

#: Seconds the pool waits, once one of its processes died, for a record's lock to be free: a write holds it
#: for microseconds, so a lock still taken then was taken by the dead (or frozen and killed) process.
ORPHAN_WAIT = 1.0

#: One step of a state machine: from a state and the carrier's clock, an answer and the next state.
Step = Callable[[S, float], tuple[T, S]]


class SharedRecord(Generic[S]):
    """A :class:`Carried` record in a ``multiprocessing.Array('d')``; create it with :meth:`create`.

    The array holds a version, then the record's fields. A writer (under the lock) makes the
    version odd, writes the fields, and makes it even again (a seqlock); a reader takes a
    snapshot without the lock and keeps it only if the version was even and the same before
    and after. Each process keeps the last record it decoded with its version, so the hot path
    (nothing changed: closed breaker, no rate) reads one double and builds nothing. A step is
    first tried on that snapshot: when it would change nothing no lock is taken; otherwise it
    runs again under the lock, on the state as it is, and its result is written. The clock is
    the monotonic one: the same for every process of the pool.
    """

    def __init__(self, shared, kind: type[S]):
        self.shared = shared
        self.kind = kind
        self.view = shared.get_obj()
        self.seen: tuple[float, S] | None = None  # the version last decoded, and its record

    @classmethod
    def create(cls, context, initial: S) -> SharedRecord[S]:
        # a plain lock, not the default recursive one: any process may release it once its holder is dead
        return cls(context.Array("d", [0.0, *initial.encode()], lock=context.Lock()), type(initial))

    def read(self) -> S:
        """A consistent snapshot of the record."""
        view, seen = self.view, self.seen
        version = view[0]
        if seen is not None and seen[0] == version:
            return seen[1]
        raw = view[1:]
        if version % 2 or view[0] != version:  # a writer is at work: read under its lock
            with self.shared.get_lock():
                return self._read_held()
        record = self.kind.decode(raw)
        self.seen = (version, record)
        return record

    def _read_held(self) -> S:
        """The record, read by the lock's holder. A write whose process died half way (the version left odd)
        is finished as the fields stand: each field is whole, its old value or its new one."""
        view = self.view
        if view[0] % 2:
            view[0] += 1
        version, seen = view[0], self.seen
        if seen is not None and seen[0] == version:
            return seen[1]
        record = self.kind.decode(view[1:])
        self.seen = (version, record)
        return record

    def recover(self, wait: float = ORPHAN_WAIT) -> None:
        """Once a process of the pool died (or was killed frozen): a lock still taken ``wait`` seconds later was
        taken by it and is released, else every other process would wait for it forever; a write it left half
        done is finished."""
        lock = self.shared.get_lock()
        if not lock.acquire(timeout=wait):
            try:
                lock.release()  # nobody else ever would
            except ValueError:  # released meanwhile: its holder was alive after all
                pass
            lock.acquire()
        try:
            self._read_held()
        finally:
            lock.release()

    def step(self, step: Step[S, T]) -> T:
        """Run ``step`` on the state; store what it returns unless it is the same state."""
        seen = self.read()
        answer, after = step(seen, time.monotonic())
        if after is seen:
            return answer
        with self.shared.get_lock():
            state = self._read_held()
            answer, after = step(state, time.monotonic())
            if after is not state:  # a step returns the very state it was given when nothing changes
                self._write(after)
        return answer

    def _write(self, record: S) -> None:
        """Under the lock: the fields between an odd and an even version."""
        view = self.view
        version = view[0]
        view[0] = version + 1
        view[1:] = record.encode()
        view[0] = version + 2
        self.seen = (version + 2, record)

    def __getstate__(self):  # sent to a worker: the shared array travels, its view is rebuilt there
        state = self.__dict__.copy()
        del state["view"]
        state["seen"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.view = self.shared.get_obj()
