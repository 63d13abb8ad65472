"""What every SQL store shares, whatever the role: how a statement is run, and the reads several roles need.

SQLite and PostgreSQL run the same statements on the same tables; a store says only how its
database differs (:attr:`SQLBase.PARAM`, how a transaction and an exclusive section are
opened, how an ``IN`` list is bound) and does the per-row paths its own fastest way.
Statements are written with ``?`` placeholders. The roles' statements are in
:mod:`engine.ledger.sql_runs`, :mod:`~engine.ledger.sql_passes`, :mod:`~engine.ledger.sql_chunks`
and :mod:`~engine.ledger.sql_reader`; :class:`engine.ledger.sql.SQLStore` joins them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, closing
from typing import Any

from engine.errors import UnknownRun
from engine.ledger.lease import Holder
from engine.ledger.roles import Page
from engine.wire import Dispatch


class SQLBase:
    """A ledger over a DB-API connection ``conn``: the helpers each role's statements use."""

    #: The database's placeholder for ``?`` in the statements below.
    PARAM = "?"

    #: The store's case-insensitive LIKE.
    LIKE = "LIKE"

    #: The database's clock, in epoch seconds: every lease time of a chunk is taken from it, so that
    #: nodes whose clocks differ by seconds still agree on who holds what.
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"

    #: Ends a SELECT to lock its rows, passing over those another session holds: a frozen holder's lock
    #: is waited out by nobody. SQLite has one writer at a time, so nothing to pass over.
    SKIP_LOCKED = ""

    #: Whether a row's ``captured`` JSON has a value named by the bound parameter (a --capture name).
    HAS_CAPTURE = "json_type(captured, '$.values.' || ?) IS NOT NULL"

    conn: Any
    #: What the user gave as ``--db``.
    location: str

    @abstractmethod
    def _transaction(self) -> AbstractContextManager:
        """Statements within it commit together, or not at all."""

    @abstractmethod
    def _exclusive(self, name: str) -> AbstractContextManager:
        """A transaction no other writer of ``name`` runs beside (read, then write without a race)."""

    @abstractmethod
    def _in(self, values: Iterable[str]) -> tuple[str, tuple]:
        """``status`` membership in ``values``: the SQL after the column, and its parameters."""

    @abstractmethod
    def _write_attempts(self, attempts: list[tuple]) -> None:
        """Insert attempt tuples and move their rows to each attempt's outcome (never out of ``succeeded``),
        inside the caller's transaction."""

    def _run(self, sql: str, params: tuple = ()) -> Any:
        return self.conn.execute(sql if self.PARAM == "?" else sql.replace("?", self.PARAM), params)

    def _value(self, sql: str, params: tuple) -> Any:
        """The one value an aggregate query returns."""
        row = self._run(sql, params).fetchone()
        assert row is not None, sql
        return row[0]

    def _row(self, sql: str, params: tuple) -> dict | None:
        cursor = self._run(sql, params)
        row = cursor.fetchone()
        return None if row is None else dict(zip([column[0] for column in cursor.description], row, strict=True))

    def _run_many(self, sql: str, rows: list[tuple]) -> None:
        with closing(self.conn.cursor()) as cursor:
            cursor.executemany(sql if self.PARAM == "?" else sql.replace("?", self.PARAM), rows)

    def _unknown_run(self, run_id: str) -> UnknownRun:
        return UnknownRun(f"no run {run_id!r} in {self.location}")

    def lease(self, run_id: str) -> dict | None:
        return self._row("SELECT * FROM leases WHERE run_id = ?", (run_id,))

    def _write_lease(
        self, run_id: str, holder: Holder, now: float, frontier: tuple[float | None, int | None], timeout: float
    ) -> None:
        self._run(
            "INSERT INTO leases (run_id, holder, host, pid, heartbeat_at, frontier_priority, frontier_rid,"
            " timeout) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
            " holder = excluded.holder, host = excluded.host, pid = excluded.pid,"
            " heartbeat_at = excluded.heartbeat_at, frontier_priority = excluded.frontier_priority,"
            " frontier_rid = excluded.frontier_rid, timeout = excluded.timeout",
            (run_id, holder.name, holder.host, holder.pid, now, *frontier, timeout),
        )

    def _pages(self, run_id: str, states: Iterable[str], page: int = 1000) -> Iterator[Page]:
        """Rows in ``states``, highest priority first, then input order: keyset pagination (priority level,
        then rid) keeps every page an index seek, and results can be recorded between pages."""
        membership, state_params = self._in(states)
        level = self._value("SELECT max(priority) FROM requests WHERE run_id = ?", (run_id,))
        while level is not None:
            after = 0
            while True:
                rows = self._run(
                    "SELECT rid, row_id, payload, idempotency_key, attempts FROM requests"
                    f" WHERE run_id = ? AND priority = ? AND rid > ? AND status {membership}"
                    " ORDER BY rid LIMIT ?",
                    (run_id, level, after, *state_params, page),
                ).fetchall()
                if not rows:
                    break
                after = rows[-1][0]
                yield Page(level, [Dispatch(*row) for row in rows])
            level = self._value("SELECT max(priority) FROM requests WHERE run_id = ? AND priority < ?", (run_id, level))
