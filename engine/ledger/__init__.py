"""The ledger: what happened to every request of every run, behind the :class:`Store` interface.

:class:`Store` is the union of four roles (:mod:`engine.ledger.roles`): :class:`RunBook`,
:class:`PassLedger`, :class:`ChunkLedger` and :class:`LedgerReader`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.extras import POSTGRES, require
from engine.ledger.roles import ChunkLedger, LedgerReader, PassLedger, RunBook
from engine.ledger.store import BUSY_TIMEOUT, EXPORT_COLUMNS, DuplicateRow, LeaseHeld, LeaseLost, Page, RunExists, Store

if TYPE_CHECKING:
    from engine.ledger.sqlite import MEMORY, SQLiteStore

#: Names of the SQLite store, loaded on first use (a sender that never opens a ledger skips sqlite-utils).
_SQLITE_NAMES = frozenset({"MEMORY", "SQLiteStore"})

__all__ = [
    "BUSY_TIMEOUT",
    "EXPORT_COLUMNS",
    "MEMORY",
    "ChunkLedger",
    "DuplicateRow",
    "LeaseHeld",
    "LeaseLost",
    "LedgerReader",
    "Page",
    "PassLedger",
    "RunBook",
    "RunExists",
    "SQLiteStore",
    "Store",
    "open_store",
]


def __getattr__(name: str):
    if name in _SQLITE_NAMES:
        from engine.ledger import sqlite

        return getattr(sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(db: str, create: bool = True, busy_timeout: float = BUSY_TIMEOUT) -> Store:
    """The ledger ``--db`` names: a ``postgresql://`` URL, :data:`MEMORY` (``":memory:"``: SQLite in memory,
    for unit tests), or else a SQLite file path (created if ``create``)."""
    if db.startswith(("postgresql://", "postgres://")):
        require(POSTGRES)  # psycopg is loaded only for a PostgreSQL ledger, or its extra is named
        from engine.ledger.postgres import PostgresStore

        return PostgresStore(db, create=create, busy_timeout=busy_timeout)
    from engine.ledger.sqlite import SQLiteStore

    return SQLiteStore(db, create=create, busy_timeout=busy_timeout)
