"""The PostgreSQL store's read side: counts, percentiles, errors and exports for reports and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import psycopg

from engine.ledger.store import EXPORT_COLUMNS
from engine.states import STATES, SUCCEEDED


def as_dict(cursor, row) -> dict:
    return dict(zip([column.name for column in cursor.description], row, strict=True))


class PostgresReads:
    """The queries that only read; mixed into :class:`~engine.ledger.postgres.PostgresStore`."""

    conn: psycopg.Connection

    def _value(self, query: str, params: tuple) -> Any:
        """The one value an aggregate query returns."""
        row = self.conn.execute(query, params).fetchone()
        assert row is not None, query
        return row[0]

    def list_runs(self) -> list[dict]:
        runs = self.conn.execute("SELECT run_id, created_at, state, total FROM runs ORDER BY created_at").fetchall()
        return [{"run_id": r, "created_at": c, "state": s, "total": t, **self.counts(r)} for r, c, s, t in runs]

    def counts(self, run_id: str) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update(
            self.conn.execute(
                "SELECT status, count(*) FROM requests WHERE run_id = %s GROUP BY status", (run_id,)
            ).fetchall()
        )
        return counts

    def count_in(self, run_id: str, states: Iterable[str]) -> int:
        return self._value(
            "SELECT count(*) FROM requests WHERE run_id = %s AND status = ANY(%s)", (run_id, list(states))
        )

    def top_error(self, run_id: str) -> tuple[str, int] | None:
        found = self.conn.execute(
            "SELECT coalesce(error, 'HTTP ' || http_status), count(*) FROM requests WHERE run_id = %s"
            f" AND status <> '{SUCCEEDED}' AND (error IS NOT NULL OR http_status IS NOT NULL)"
            " GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if found is None else tuple(found)

    def attempt_count(self, run_id: str) -> int:
        return int(self._value("SELECT coalesce(sum(attempts), 0) FROM requests WHERE run_id = %s", (run_id,)))

    def elapsed(self, run_id: str) -> float:
        return self._value(
            "SELECT coalesce(sum(coalesce(finished_at, started_at) - started_at), 0) FROM passes WHERE run_id = %s",
            (run_id,),
        )

    def latency_percentiles(self, run_id: str, quantiles: Iterable[float]) -> dict[float, float | None]:
        """``percentile_disc`` is the nearest rank: the first value whose cumulative share reaches q."""
        quantiles = list(quantiles)
        values = self._value(
            "SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY latency_ms) FROM requests"
            " WHERE run_id = %s AND latency_ms IS NOT NULL AND http_status IS NOT NULL",
            (quantiles, run_id),
        )
        return dict(zip(quantiles, values or [None] * len(quantiles), strict=True))

    def status_counts(self, run_id: str) -> dict[str, int]:
        return dict(
            self.conn.execute(
                "SELECT coalesce(a.http_status::text, 'curl:' || a.curl_error), count(*) FROM requests r"
                " JOIN attempts a ON a.rid = r.rid WHERE r.run_id = %s GROUP BY 1 ORDER BY 1",
                (run_id,),
            ).fetchall()
        )

    def iter_rows(self, run_id: str, states: Iterable[str]) -> Iterator[dict]:
        with self.conn.transaction(), self.conn.cursor(name="export") as cursor:  # server-side: streamed
            cursor.execute(
                "SELECT row_id, line, status, attempts, http_status, curl_error, error,"
                " round(latency_ms::numeric, 3)::float8, idempotency_key FROM requests"
                " WHERE run_id = %s AND status = ANY(%s) ORDER BY rid",
                (run_id, list(states)),
            )
            for row in cursor:
                yield dict(zip(EXPORT_COLUMNS, row, strict=True))
