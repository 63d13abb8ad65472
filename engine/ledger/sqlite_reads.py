"""The SQLite store's read side: counts, percentiles, errors and exports for reports and the CLI."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing

from engine.ledger.store import EXPORT_COLUMNS, nearest_ranks
from engine.states import STATES


def in_list(values: tuple) -> str:
    """``?,?,?``: the placeholders of an ``IN (...)`` list."""
    return ",".join("?" * len(values))


class SQLiteReads:
    """The queries that only read; mixed into :class:`~engine.ledger.sqlite.SQLiteStore`."""

    conn: sqlite3.Connection

    def list_runs(self) -> list[dict]:
        runs = self.conn.execute("SELECT run_id, created_at, state, total FROM runs ORDER BY created_at").fetchall()
        return [{"run_id": r, "created_at": c, "state": s, "total": t, **self.counts(r)} for r, c, s, t in runs]

    def counts(self, run_id: str) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update(
            self.conn.execute(
                "SELECT status, count(*) FROM requests WHERE run_id = ? GROUP BY status", (run_id,)
            ).fetchall()
        )
        return counts

    def count_in(self, run_id: str, states: Iterable[str]) -> int:
        states = tuple(states)
        return self.conn.execute(
            f"SELECT count(*) FROM requests WHERE run_id = ? AND status IN ({in_list(states)})", (run_id, *states)
        ).fetchone()[0]

    def top_error(self, run_id: str) -> tuple[str, int] | None:
        """The most common last error of the rows that did not succeed, and how many rows have it."""
        return self.conn.execute(
            "SELECT coalesce(error, 'HTTP ' || http_status), count(*) FROM requests WHERE run_id = ?"
            " AND status != 'succeeded' AND (error IS NOT NULL OR http_status IS NOT NULL)"
            " GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
            (run_id,),
        ).fetchone()

    def attempt_count(self, run_id: str) -> int:
        return self.conn.execute(
            "SELECT coalesce(sum(attempts), 0) FROM requests WHERE run_id = ?", (run_id,)
        ).fetchone()[0]

    def elapsed(self, run_id: str) -> float:
        """Seconds spent sending, summed over the run's passes."""
        return self.conn.execute(
            "SELECT coalesce(sum(coalesce(finished_at, started_at) - started_at), 0) FROM passes WHERE run_id = ?",
            (run_id,),
        ).fetchone()[0]

    def latency_percentiles(self, run_id: str, quantiles: Iterable[float]) -> dict[float, float | None]:
        """Nearest-rank percentiles of the latency of each row's last attempt that got an answer.

        One sorted scan, picking the ranks as they pass: constant memory for any run size.
        """
        where = "FROM requests WHERE run_id = ? AND latency_ms IS NOT NULL AND http_status IS NOT NULL"
        count = self.conn.execute(f"SELECT count(*) {where}", (run_id,)).fetchone()[0]
        with closing(self.conn.execute(f"SELECT latency_ms {where} ORDER BY latency_ms", (run_id,))) as rows:
            return nearest_ranks((value for (value,) in rows), count, quantiles)

    def status_counts(self, run_id: str) -> dict[str, int]:
        """Attempts per HTTP status (``"curl:N"`` for transfers that got no answer)."""
        rows = self.conn.execute(
            "SELECT coalesce(CAST(a.http_status AS TEXT), 'curl:' || a.curl_error), count(*) FROM requests r"
            " JOIN attempts a ON a.rid = r.rid WHERE r.run_id = ? GROUP BY 1 ORDER BY 1",
            (run_id,),
        ).fetchall()
        return dict(rows)

    def iter_rows(self, run_id: str, states: Iterable[str]) -> Iterator[dict]:
        states = tuple(states)
        marks = in_list(states)
        cursor = self.conn.execute(
            "SELECT row_id, line, status, attempts, http_status, curl_error, error, round(latency_ms, 3),"
            f" idempotency_key FROM requests WHERE run_id = ? AND status IN ({marks}) ORDER BY rid",
            (run_id, *states),
        )
        names = EXPORT_COLUMNS
        with closing(cursor):
            for row in cursor:
                yield dict(zip(names, row, strict=True))
