"""The :class:`Store`: every read and write of the ledger, whatever database holds it.

Everything above the ledger (runner, pass, reports, CLI) talks to this interface; it is the
union of the roles in :mod:`engine.ledger.roles` (runs and loading, a pass's writes, chunks,
reading), which a caller or a test fake may name on their own. SQLite
(:class:`engine.ledger.sqlite.SQLiteStore`, also in memory) and PostgreSQL implement it on the
same tables (:mod:`engine.ledger.schema`), and ``tests/test_ledger.py`` runs one contract,
role by role, against each.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator

from engine.errors import LedgerError, LedgerUnavailable
from engine.ledger.roles import (
    EXPORT_COLUMNS,
    FOUND_COLUMNS,
    ChunkLedger,
    LedgerReader,
    Page,
    PassLedger,
    RunBook,
)

__all__ = ["BUSY_TIMEOUT", "EXPORT_COLUMNS", "FOUND_COLUMNS", "Page", "Store"]

#: How long a write waits for another program's lock on the ledger, or a PostgreSQL ledger's
#: connection, before giving up (s; --busy-timeout).
BUSY_TIMEOUT = 30.0


class DuplicateRow(LedgerError):
    """Two input rows share one id."""

    def __init__(self, row_id: str, line: int, first_line: int):
        self.row_id, self.line, self.first_line = row_id, line, first_line
        super().__init__(f"duplicate id {row_id!r} (first seen on line {first_line})")


class LeaseHeld(LedgerError):
    """Another live process is sending (or loading) this run."""


class RunExists(LedgerError):
    """A run of that id finished loading before: it is finished with ``rerun``, never loaded again."""


class LeaseLost(LedgerError):
    """This pass's lease was taken over (it looked dead to another process)."""


class Store(RunBook, PassLedger, ChunkLedger, LedgerReader):
    """One ledger: runs, their requests (one per input row), every attempt, passes, leases and chunks."""

    EXPORT_COLUMNS = EXPORT_COLUMNS


def ledger_unavailable(location: str, why: str) -> LedgerUnavailable:
    """The one line for a write the ledger could not make."""
    return LedgerUnavailable(f"ledger {location} {why}. Nothing is sent that cannot be recorded")


def nearest_ranks(sorted_values: Iterator[float], count: int, quantiles: Iterable[float]) -> dict[float, float | None]:
    """Nearest-rank percentiles picked from ``count`` ascending values as they pass: constant memory."""
    quantiles = list(quantiles)
    result: dict[float, float | None] = dict.fromkeys(quantiles)
    if not count:
        return result
    by_rank: dict[int, list[float]] = {}
    for q in quantiles:
        by_rank.setdefault(min(count - 1, max(0, math.ceil(q * count) - 1)), []).append(q)
    position = 0
    for rank in sorted(by_rank):
        # skipped in C, not one Python step per value: the ranks sit far apart in a large run
        value = next(itertools.islice(sorted_values, rank - position, None), None)
        position = rank + 1
        for q in by_rank[rank]:
            result[q] = value
    return result
