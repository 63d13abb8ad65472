"""What keeps a heavy scan from holding up the live pages: every ledger the dashboard opens has a
statement timeout, the scans (failures, their groups) run on a few threads of their own, and the
same scan asked again within a moment is answered once.

Twenty operators searching error texts at once on a run of a million rows must not delay the
page that shows the run's progress: the live page reads its counts from an index on the
default threads, while the scans queue on :data:`SCAN_THREADS` threads and are cut off after
:data:`STATEMENT_TIMEOUT` seconds (a 503 that says so, never a 500).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from engine.errors import LedgerError
from engine.ledger import Store, open_store

#: Longest time one ledger the dashboard opened may spend in its statements (s).
STATEMENT_TIMEOUT = 5.0
#: SQLite virtual-machine steps between two looks at the clock (a look costs the GIL).
PROGRESS_STEPS = 20_000
#: Scans (failures, groups) that may run at once; the others wait their turn, holding no thread.
SCAN_THREADS = 4
#: How long a scan's answer is reused for the same question (s).
SCAN_CACHE_FOR = 3.0
#: Answers kept at most (the oldest are dropped first).
SCAN_CACHE_SIZE = 256

T = TypeVar("T")


class ScanTooLong(LedgerError):
    """A dashboard query ran past :data:`STATEMENT_TIMEOUT` and was cut off."""


def open_bounded(db: str, timeout: float = STATEMENT_TIMEOUT) -> Store:
    """The ledger at ``db`` for the dashboard: reading it stops after ``timeout`` seconds in all (SQLite:
    a progress handler counted from the open, since each page opens its own; PostgreSQL: each statement)."""
    store = open_store(db, create=False)
    conn = getattr(store, "conn", None)
    if isinstance(conn, sqlite3.Connection):
        deadline = time.monotonic() + timeout
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
    elif conn is not None:
        conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
    return store


def too_long(error: Exception) -> bool:
    """Whether ``error`` is a statement the timeout cut off (SQLite: interrupted; PostgreSQL: canceled)."""
    return "interrupted" in str(error) or type(error).__name__ == "QueryCanceled"


class Scans:
    """Heavy reads, run on :data:`SCAN_THREADS` threads of their own, each answer reused for
    :data:`SCAN_CACHE_FOR` seconds; the same question asked while it is being answered waits for it."""

    def __init__(self, threads: int = SCAN_THREADS, cache_for: float = SCAN_CACHE_FOR):
        self.limiter = CapacityLimiter(threads)
        self.cache_for = cache_for
        self.lock = threading.Lock()
        self.answers: dict[Hashable, tuple[float, object]] = {}
        self.asking: dict[Hashable, threading.Lock] = {}

    async def answer(self, key: Hashable, read: Callable[[], T]) -> T:
        """``read()``'s answer to ``key``: a recent one, or read now on a scan thread."""
        return await anyio.to_thread.run_sync(self._answer, key, read, limiter=self.limiter)

    def _answer(self, key: Hashable, read: Callable[[], T]) -> T:
        with self.lock:
            one = self.asking.setdefault(key, threading.Lock())
        with one:  # one read per question at a time: the others take its answer
            with self.lock:
                found = self.answers.get(key)
            if found is not None and time.monotonic() - found[0] < self.cache_for:
                return found[1]  # type: ignore[return-value]
            try:
                value = read()
            except Exception as error:
                if too_long(error):
                    raise ScanTooLong(f"this search took longer than {STATEMENT_TIMEOUT:g} s: narrow it") from None
                raise
            finally:
                with self.lock:
                    self.asking.pop(key, None)
            with self.lock:
                self.answers[key] = (time.monotonic(), value)
                while len(self.answers) > SCAN_CACHE_SIZE:
                    self.answers.pop(next(iter(self.answers)))
            return value

    def forget(self) -> None:
        """The ledger changed (an action here): no answer is reused."""
        with self.lock:
            self.answers.clear()
