"""The seam between a pass and whatever sends its rows: the :class:`Backend` interface.

A pass (:class:`engine.run.passes.LocalPass`) decides *what* is sent and records what came
back; a backend owns *who* sends it: numbered workers that ask for rows, report
finished attempts, and may die or stall. The local process pool
(:class:`engine.local.pool.LocalBackend`) is the first implementation; the tests drive
a pass with an in-process fake.

The caller that starts a backend owns its lifetime (``with`` it); a pass only uses it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from engine.wire import Dispatch, Report


class Backend(ABC):
    """Workers ``0 .. size-1`` that send rows and report every attempt."""

    size: int

    @property
    @abstractmethod
    def window(self) -> int:
        """Rows its workers can have in flight at once: a pass hands out no reserve once the rows
        left fit in it."""

    @abstractmethod
    def events(self, timeout: float) -> tuple[list[Report], list[int]]:
        """Reports that arrived within ``timeout`` seconds, and the workers that died since the last call.

        A dead worker may have sent any row it was given and not yet reported.
        """

    @abstractmethod
    def send_rows(self, worker: int, rows: list[Dispatch]) -> None:
        """Hand ``worker`` the rows it asked for; none tells it the pass is ending (no reserve)."""

    @abstractmethod
    def replace(self, worker: int) -> None:
        """Start a fresh worker in place of one that died or left."""

    @abstractmethod
    def stalled(self, limit: float) -> list[int]:
        """Live workers that made no progress for ``limit`` seconds."""

    @abstractmethod
    def kill(self, worker: int) -> None:
        """End a worker at once; :meth:`events` then reports it dead."""

    @abstractmethod
    def outage_since(self) -> float | None:
        """When the endpoint went down (the workers paused), or None while it is up."""

    @abstractmethod
    def drain(self) -> None:
        """Every worker finishes what is in flight, starts nothing new, reports, and leaves."""

    @abstractmethod
    def stop(self, timeout: float) -> None:
        """The pass is over (nothing is in flight): let the workers leave, waiting up to ``timeout`` s."""

    @abstractmethod
    def live(self) -> list[int]:
        """Workers still present (not left, not dead)."""

    @abstractmethod
    def close(self) -> None:
        """End every worker (killing those still there) and free what the backend holds."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
