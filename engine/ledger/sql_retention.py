"""The statements of retention (:mod:`engine.ledger.retention`): which runs a purge may take, and the
purge itself, which stores the run's summary and deletes its rows and attempts in one transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from engine.ledger import lease as leases
from engine.ledger.retention import STILL_TO_SEND, UNFINISHED_RUN_STATES
from engine.ledger.sql_reader import SQLReader


class SQLRetention(SQLReader):
    """Purging old runs, in SQL (a purged run's counts are read back as :class:`SQLReader` counts them)."""

    def purge_candidates(self, ended_before: float, include_unfinished: bool = False) -> list[dict]:
        found = self._run(
            "SELECT run_id, state, coalesce((SELECT max(finished_at) FROM passes p WHERE p.run_id = runs.run_id),"
            " created_at) AS ended_at FROM runs WHERE purged_at IS NULL ORDER BY created_at"
        ).fetchall()
        candidates = []
        for run_id, state, ended_at in found:
            if ended_at >= ended_before:
                continue
            rows, attempts = self._run(
                "SELECT count(*), coalesce(sum(attempts), 0) FROM requests WHERE run_id = ?", (run_id,)
            ).fetchone()
            kept = self._why_kept(run_id, state, include_unfinished)
            candidates.append(
                {
                    "run_id": run_id,
                    "state": state,
                    "ended_at": ended_at,
                    "rows": rows,
                    "attempts": attempts,
                    "kept": kept,
                }
            )
        return candidates

    def purge_run(self, run_id: str, summary: Callable[[], dict], include_unfinished: bool = False) -> bool:
        with self._exclusive(f"lease:{run_id}"):  # the lease's lock: no pass starts while it goes
            found = self._run("SELECT state FROM runs WHERE run_id = ? AND purged_at IS NULL", (run_id,)).fetchone()
            if found is None or self._why_kept(run_id, found[0], include_unfinished):
                return False
            stored = {"counts": self.counts(run_id), "scans": summary()}
            self._run(
                "UPDATE runs SET purged_at = ?, summary = ? WHERE run_id = ?",
                (time.time(), json.dumps(stored, sort_keys=True), run_id),
            )
            self._run("DELETE FROM attempts WHERE rid IN (SELECT rid FROM requests WHERE run_id = ?)", (run_id,))
            self._run("DELETE FROM requests WHERE run_id = ?", (run_id,))
            self._run("DELETE FROM leases WHERE run_id = ?", (run_id,))
        return True

    def _why_kept(self, run_id: str, state: str, include_unfinished: bool) -> str | None:
        """Why the run must not be purged now; None if it may. A live holder is never overridden."""
        lease = self.lease(run_id)
        if lease is not None and leases.holder_alive(lease):
            return f"held by {lease['holder']}"
        if include_unfinished:
            return None
        if state in UNFINISHED_RUN_STATES:
            return f"it is {state}"
        if lease is not None:
            return "its last pass did not end cleanly (a lease is left)"
        membership, params = self._in(STILL_TO_SEND)
        left = self._value(f"SELECT count(*) FROM requests WHERE run_id = ? AND status {membership}", (run_id, *params))
        return f"{left} rows may still be sent (rerun them, or --include-unfinished)" if left else None
