"""Pool-wide state in shared memory: a frozen record of numbers, read without the lock, changed under it.

The admission controls (:mod:`~engine.delivery.breaker`, :mod:`~engine.delivery.ratelimit`) are
pure state machines over small frozen records; this module only *carries* such a record for every
worker process of the pool. Worker nodes carry the same records in Redis
(:mod:`engine.cluster.carrier`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
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


class HeldLock:
    """A lock the pool's processes share that knows which of them holds it: once that process is dead
    (killed, or frozen and killed as stalled) the pool releases it, instead of every other process waiting
    on it forever. Killed between taking it and writing its pid (a few instructions), a holder is not seen."""

    def __init__(self, lock, holder):
        self.lock, self.holder = lock, holder

    @classmethod
    def create(cls, context) -> HeldLock:
        return cls(context.Lock(), context.Value("q", 0, lock=False))  # the holder's pid, 0: none

    def acquire(self, block: bool = True) -> bool:
        """Take it as this process's (False: ``block`` was False and another process holds it)."""
        if not self.lock.acquire(block=block):
            return False
        self.holder.value = os.getpid()
        return True

    def release(self) -> None:
        self.holder.value = 0
        self.lock.release()

    def __enter__(self) -> HeldLock:
        self.acquire()
        return self

    def __exit__(self, *_exc) -> None:
        self.release()

    def recover(self, dead: Iterable[int]) -> None:
        """Release it if one of the ``dead`` processes (pids) held it: nobody else ever would."""
        holder = self.holder.value
        if holder and holder in set(dead):
            self.release()


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

    def __init__(self, view, lock: HeldLock, kind: type[S]):
        self.view, self.lock = view, lock  # the shared array: the version, then the fields
        self.kind = kind
        self.seen: tuple[float, S] | None = None  # the version last decoded, and its record

    @classmethod
    def create(cls, context, initial: S) -> SharedRecord[S]:
        return cls(context.Array("d", [0.0, *initial.encode()], lock=False), HeldLock.create(context), type(initial))

    def read(self) -> S:
        """A consistent snapshot of the record."""
        view, seen = self.view, self.seen
        version = view[0]
        if seen is not None and seen[0] == version:
            return seen[1]
        raw = view[1:]
        if version % 2 or view[0] != version:  # a writer is at work: read under its lock
            with self.lock:
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

    def recover(self, dead: Iterable[int]) -> None:
        """The pool saw the ``dead`` processes go: a lock one of them held is released (the next holder
        finishes a write it left half done)."""
        self.lock.recover(dead)

    def step(self, step: Step[S, T]) -> T:
        """Run ``step`` on the state; store what it returns unless it is the same state."""
        seen = self.read()
        answer, after = step(seen, time.monotonic())
        if after is seen:
            return answer
        with self.lock:
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

    def __getstate__(self):  # sent to a worker: the shared array and its lock travel, not the decoded record
        state = self.__dict__.copy()
        state["seen"] = None
        return state
