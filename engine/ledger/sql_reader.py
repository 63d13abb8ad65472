"""The statements of :class:`~engine.ledger.roles.LedgerReader`: counts, figures, rows found by a filter,
passes and their pauses. Reads only; the indexes they use are named where a condition must match."""

from __future__ import annotations

import json
from collections.abc import Iterable

from engine.ledger.roles import EXPORT_COLUMNS, FOUND_COLUMNS, LedgerReader, RowTotals
from engine.ledger.schema import SENT, UNSETTLED
from engine.ledger.selection import NOT_SUCCEEDED, RowFilter
from engine.ledger.sql_base import SQLBase
from engine.states import CHUNK_DONE, CHUNK_RUNNING, PENDING, STATES, SUCCEEDED
from engine.wire import Attempt

#: The rows whose last attempt got an answer: what the latency percentiles rank.
ANSWERED = "latency_ms IS NOT NULL AND http_status IS NOT NULL"
#: What :meth:`SQLReader.failure_groups` gives of each group.
GROUP_COLUMNS = ("status", "http_status", "curl_error", "error", "rows", "row_id")
#: What :meth:`SQLReader.node_figures` gives of each node.
NODE_COLUMNS = ("node", "held", "heartbeat_at", "rows")
#: What :meth:`SQLReader.audit` gives of each action.
AUDIT_COLUMNS = ("at", "who", "action", "rows", "outcome")


class SQLReader(SQLBase, LedgerReader):
    """What reports and the dashboard read, in SQL."""

    def list_runs(self) -> list[dict]:
        runs = self._run(
            "SELECT run_id, created_at, state, total, coalesce(paused, 0) FROM runs ORDER BY created_at"
        ).fetchall()
        return [
            {"run_id": r, "created_at": c, "state": s, "total": t, "paused": p, **self.counts(r)}
            for r, c, s, t, p in runs
        ]

    def counts(self, run_id: str) -> dict[str, int]:
        return self._counted(run_id)[0]

    def count_in(self, run_id: str, states: Iterable[str]) -> int:
        # from the indexes, as counts(): a pass about to send a million pending rows reads none of them
        counts, purged = self._counted(run_id)
        return 0 if purged else sum(counts.get(state, 0) for state in states)  # a purged run's rows are gone

    def _counted(self, run_id: str) -> tuple[dict[str, int], bool]:
        """Rows per state, and whether the run was purged (then its counts are those stored before)."""
        counts = dict.fromkeys(STATES, 0)
        loaded = self._run(
            "SELECT total, summary FROM runs WHERE run_id = ? AND state <> 'loading'", (run_id,)
        ).fetchone()
        if loaded and loaded[1]:
            counts.update(json.loads(loaded[1])["counts"])
            return counts, True
        counts.update(
            self._run(
                f"SELECT status, count(*) FROM requests WHERE run_id = ? AND {SENT} GROUP BY status",
                (run_id,),
            ).fetchall()
        )
        total = loaded[0] if loaded else self._value("SELECT count(*) FROM requests WHERE run_id = ?", (run_id,))
        counts[PENDING] = total - sum(counts.values())  # pending rows are not in the index of sent ones
        return counts, False

    def top_error(self, run_id: str) -> tuple[str, int] | None:
        found = self._run(
            "SELECT coalesce(error, 'HTTP ' || http_status), count(*) FROM requests WHERE run_id = ?"
            f" AND {UNSETTLED} AND (error IS NOT NULL OR http_status IS NOT NULL)"  # the failures' index
            " GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if found is None else tuple(found)

    def row_totals(self, run_id: str) -> RowTotals:
        totals = self._run(
            "SELECT coalesce(sum(attempts), 0),"
            f" coalesce(sum(CASE WHEN status = '{SUCCEEDED}' AND replayed = 1 THEN 1 ELSE 0 END), 0),"
            f" coalesce(sum(CASE WHEN {ANSWERED} THEN 1 ELSE 0 END), 0)"
            " FROM requests WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        return RowTotals(*map(int, totals))

    def elapsed(self, run_id: str) -> float:
        return self._value(
            "SELECT coalesce(sum(coalesce(finished_at, started_at) - started_at), 0) FROM passes WHERE run_id = ?",
            (run_id,),
        )

    def capture_counts(self, run_id: str, names: Iterable[str]) -> dict[str, int]:
        names = tuple(names)
        if not names:
            return {}
        counted = self._run(
            f"SELECT {', '.join(f'sum(CASE WHEN {self.HAS_CAPTURE} THEN 1 ELSE 0 END)' for _ in names)}"
            " FROM requests WHERE run_id = ? AND captured IS NOT NULL",
            (*names, run_id),
        ).fetchone()
        return {name: int(count or 0) for name, count in zip(names, counted, strict=True)}

    def status_counts(self, run_id: str) -> dict[str | None, int]:
        counted = self._run(  # grouped by the columns as stored: no text made per attempt to group on
            "SELECT a.http_status, a.curl_error, count(*) FROM requests r JOIN attempts a ON a.rid = r.rid"
            " WHERE r.run_id = ? GROUP BY a.http_status, a.curl_error",
            (run_id,),
        ).fetchall()
        labelled = [(_status_label(status, curl), n) for status, curl, n in counted]
        return dict(sorted(labelled, key=lambda pair: (pair[0] is not None, pair[0] or "")))

    def find_rows(self, run_id: str, rows: RowFilter, after_rid: int = 0, limit: int = 100) -> list[dict]:
        where, params = rows.where(self.LIKE)
        found = self._run(
            f"SELECT rid, {', '.join(EXPORT_COLUMNS)}, payload,"
            " (SELECT excerpt FROM attempts a WHERE a.rid = requests.rid ORDER BY a.attempt DESC LIMIT 1),"
            " captured, updated_at"
            f" FROM requests WHERE run_id = ? AND rid > ? AND {where} ORDER BY rid LIMIT ?",
            (run_id, after_rid, *params, limit),
        ).fetchall()
        return [_found(dict(zip(FOUND_COLUMNS, row, strict=True))) for row in found]

    def count_rows(self, run_id: str, rows: RowFilter) -> dict[str, int]:
        where, params = rows.where(self.LIKE)
        counted = self._run(
            f"SELECT status, count(*) FROM requests WHERE run_id = ? AND {where} GROUP BY status", (run_id, *params)
        ).fetchall()
        return {status: count for status, count in counted}

    def row_attempts(self, rid: int) -> list[dict]:
        cursor = self._run(f"SELECT {', '.join(Attempt._fields)} FROM attempts WHERE rid = ? ORDER BY attempt", (rid,))
        return [dict(zip(Attempt._fields, row, strict=True)) for row in cursor.fetchall()]

    def audit(self, run_id: str, limit: int = 50) -> list[dict]:
        cursor = self._run(
            "SELECT at, who, action, rows, outcome FROM audit WHERE run_id = ? ORDER BY audit_id DESC LIMIT ?",
            (run_id, limit),
        )
        return [dict(zip(AUDIT_COLUMNS, row, strict=True)) for row in cursor.fetchall()]

    def failure_groups(self, run_id: str, limit: int) -> list[dict]:
        membership, state_params = self._in(NOT_SUCCEEDED)
        cursor = self._run(
            "SELECT status, http_status, curl_error, error, count(*), min(row_id) FROM requests"
            f" WHERE run_id = ? AND {UNSETTLED} AND status {membership}"  # the failures' index
            " GROUP BY status, http_status, curl_error, error ORDER BY 5 DESC LIMIT ?",
            (run_id, *state_params, limit),
        )
        return [dict(zip(GROUP_COLUMNS, row, strict=True)) for row in cursor.fetchall()]

    def node_figures(self, since: float) -> list[dict]:
        cursor = self._run(
            f"SELECT node, sum(CASE WHEN state = '{CHUNK_RUNNING}' THEN 1 ELSE 0 END), max(heartbeat_at),"
            f" coalesce(sum(CASE WHEN state = '{CHUNK_DONE}' AND finished_at >= ? THEN rows ELSE 0 END), 0)"
            " FROM chunks WHERE node IS NOT NULL GROUP BY node ORDER BY node",
            (since,),
        )
        return [dict(zip(NODE_COLUMNS, row, strict=True)) for row in cursor.fetchall()]

    def rows_since(self, run_id: str, since: float) -> dict[str, int]:
        low, high = self._run("SELECT min(rid), max(rid) FROM requests WHERE run_id = ?", (run_id,)).fetchone()
        if low is None:
            return {}
        cursor = self._run(  # a run's rids are one range, and attempts are keyed by rid
            "SELECT r.status, count(*) FROM requests r WHERE r.run_id = ? AND EXISTS"
            " (SELECT 1 FROM attempts a WHERE a.rid = r.rid AND a.rid BETWEEN ? AND ? AND a.started_at >= ?)"
            " GROUP BY r.status",
            (run_id, low, high, since),
        )
        return dict(cursor.fetchall())

    def passes(self, run_id: str) -> list[dict]:
        cursor = self._run(
            "SELECT pass_no, started_at, finished_at FROM passes WHERE run_id = ? ORDER BY pass_no", (run_id,)
        )
        passes = [
            {"pass_no": number, "started_at": started, "finished_at": finished, "pauses": []}
            for number, started, finished in cursor.fetchall()
        ]
        by_number = {p["pass_no"]: p for p in passes}
        cursor = self._run(
            "SELECT pass_no, reason, started_at, ended_at FROM pauses WHERE run_id = ? ORDER BY started_at", (run_id,)
        )
        for pass_no, reason, started_at, ended_at in cursor.fetchall():
            if pass_no in by_number:
                by_number[pass_no]["pauses"].append({"reason": reason, "started_at": started_at, "ended_at": ended_at})
        return passes

    def latency_histogram(self, run_id: str, edges: tuple[float, ...]) -> list[int]:
        buckets = [f"sum(CASE WHEN latency_ms < {edges[0]} THEN 1 ELSE 0 END)"]
        buckets += [
            f"sum(CASE WHEN latency_ms >= {low} AND latency_ms < {high} THEN 1 ELSE 0 END)"
            for low, high in zip(edges, edges[1:], strict=False)
        ]
        buckets.append(f"sum(CASE WHEN latency_ms >= {edges[-1]} THEN 1 ELSE 0 END)")
        row = self._run(
            f"SELECT {', '.join(buckets)} FROM requests WHERE run_id = ? AND http_status IS NOT NULL", (run_id,)
        ).fetchone()
        return [int(n or 0) for n in row]

    def attempts_per_second(self, run_id: str, since: float, bucket: float) -> list[tuple[float, int]]:
        low, high = self._run("SELECT min(rid), max(rid) FROM requests WHERE run_id = ?", (run_id,)).fetchone()
        if low is None:
            return []
        # a run's rows are loaded together: their rids are one range, and attempts are keyed by rid
        cursor = self._run(
            "SELECT CAST((started_at - ?) / ? AS INTEGER), count(*) FROM attempts"
            " WHERE rid BETWEEN ? AND ? AND started_at >= ? GROUP BY 1 ORDER BY 1",
            (since, bucket, low, high, since),
        )
        return [(since + index * bucket, count) for index, count in cursor.fetchall()]


def _found(row: dict) -> dict:
    if row["latency_ms"] is not None:
        row["latency_ms"] = round(row["latency_ms"], 3)
    return row


def _status_label(http_status: int | None, curl_error: int | None) -> str | None:
    """An attempt's answer as the summary names it: its HTTP status, else ``curl:<code>``, else None."""
    if http_status is not None:
        return str(http_status)
    return None if curl_error is None else f"curl:{curl_error}"
