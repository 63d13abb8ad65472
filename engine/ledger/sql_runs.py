"""The statements of :class:`~engine.ledger.roles.RunBook`: runs claimed, loaded, finished, dropped, and
rows chosen for a rerun."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from engine.ledger import lease as leases
from engine.ledger.lease import Holder
from engine.ledger.retention import KEEP_FAILED
from engine.ledger.roles import RunBook
from engine.ledger.schema import SENT
from engine.ledger.selection import RowFilter
from engine.ledger.sql_base import SQLBase
from engine.ledger.store import DuplicateRow, LeaseHeld, RunExists
from engine.states import PENDING, SELECTED, SUCCEEDED

_INSERT_RUN = (
    "INSERT INTO runs (run_id, created_at, input, url, method, options, keep_payload, state, total, not_before)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 'loading', 0, ?)"
)


def _stored(options: dict) -> tuple[str, str]:
    """The run's options as stored, and its ``--keep-payload`` mode (read by every recorded answer)."""
    return json.dumps(options, sort_keys=True), options.get("keep_payload", KEEP_FAILED)


class SQLRunBook(SQLBase, RunBook):
    """Runs and loading, in SQL."""

    def create_run(
        self, run_id: str, *, input: str, url: str, method: str, options: dict, not_before: float | None
    ) -> None:
        with self._transaction():
            self._run(_INSERT_RUN, (run_id, time.time(), input, url, method, *_stored(options), not_before))

    def claim_run(
        self,
        run_id: str,
        holder: Holder,
        *,
        input: str,
        url: str,
        method: str,
        options: dict,
        not_before: float | None,
        timeout: float,
    ) -> None:
        now = time.time()
        with self._exclusive(f"lease:{run_id}"):  # the lease's own lock: a claim and a pass's lease queue
            found = self._run("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            old = self.lease(run_id)
            if old is not None and leases.holder_alive(old, now):
                doing = "loading its input" if found is not None and found[0] == "loading" else "sending it"
                raise LeaseHeld(
                    f"run {run_id!r} is held by {old['holder']} ({leases.describe(old, now)}), {doing};"
                    " wait for it to end, or stop that process first"
                )
            if found is not None:
                if found[0] != "loading" or self._ever_sent(run_id):
                    raise RunExists(f"run {run_id!r} already exists in {self.location}")
                self._delete_rows(run_id)  # its loader died: nothing of a loading run was ever sent
            self._run(_INSERT_RUN, (run_id, now, input, url, method, *_stored(options), not_before))
            self._write_lease(run_id, holder, now, (None, None), timeout)

    def drop_load(self, run_id: str, holder: Holder) -> bool:
        with self._exclusive(f"lease:{run_id}"):
            held = self.lease(run_id)
            if held is None or held["holder"] != holder.name or self._ever_sent(run_id):
                return False
            self._delete_rows(run_id)
        return True

    def drop_abandoned_loads(self) -> int:
        dropped = 0
        for (run_id,) in self._run("SELECT run_id FROM runs WHERE state = 'loading'").fetchall():
            with self._exclusive(f"lease:{run_id}"):
                held = self.lease(run_id)
                still = self._run("SELECT 1 FROM runs WHERE run_id = ? AND state = 'loading'", (run_id,)).fetchone()
                if still is None or (held is not None and leases.holder_alive(held)) or self._ever_sent(run_id):
                    continue
                self._delete_rows(run_id)
                dropped += 1
        return dropped

    def _ever_sent(self, run_id: str) -> bool:
        """Did any pass of the run start, or any of its rows leave ``pending``?"""
        return (
            self._run(
                f"SELECT 1 FROM passes WHERE run_id = ? UNION ALL SELECT 1 FROM requests WHERE run_id = ? AND {SENT}"
                " LIMIT 1",
                (run_id, run_id),
            ).fetchone()
            is not None
        )

    def sent_elsewhere(self, run_id: str, url: str, method: str) -> tuple[str, int] | None:
        # the runs to that destination first (a few rows): their requests are then read by run_id,
        # and each is looked up in this run through the (run_id, row_id) index
        found = self._run(
            "SELECT o.run_id, count(*) FROM requests o JOIN requests n ON n.run_id = ? AND n.row_id = o.row_id"
            " WHERE o.run_id IN (SELECT run_id FROM runs"
            "  WHERE url = ? AND method = ? AND run_id <> ? AND state <> 'loading')"
            f" AND (o.status <> '{PENDING}' OR o.attempts > 0)"
            " GROUP BY o.run_id ORDER BY count(*) DESC, o.run_id LIMIT 1",
            (run_id, url, method, run_id),
        ).fetchone()
        return None if found is None else (found[0], found[1])

    def get_run(self, run_id: str) -> dict:
        run = self._row("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if run is None:
            raise self._unknown_run(run_id)
        run["options"] = json.loads(run["options"] or "{}")
        run["summary"] = json.loads(run["summary"]) if run.get("summary") else None  # a purged run's
        return run

    def has_run(self, run_id: str) -> bool:
        return self._run("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def delete_run(self, run_id: str) -> None:
        with self._transaction():
            self._delete_rows(run_id)

    def _delete_rows(self, run_id: str) -> None:
        """Everything recorded of the run, inside the caller's transaction."""
        self._run("DELETE FROM attempts WHERE rid IN (SELECT rid FROM requests WHERE run_id = ?)", (run_id,))
        for table in ("requests", "passes", "pauses", "leases", "runs"):
            self._run(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

    def finish_load(self, run_id: str, total: int, fingerprint: str) -> str | None:
        with self._exclusive(f"fingerprint:{fingerprint}"):
            other = self._run(
                "SELECT run_id FROM runs WHERE fingerprint = ? AND run_id <> ?", (fingerprint, run_id)
            ).fetchone()
            if other is not None:
                return other[0]
            self._run(
                "UPDATE runs SET state = 'ready', total = ?, fingerprint = ? WHERE run_id = ?",
                (total, fingerprint, run_id),
            )
        return None

    def record_action(self, run_id: str, who: str, action: str, rows: str, outcome: str) -> None:
        with self._transaction():
            self._run(
                "INSERT INTO audit (run_id, at, who, action, rows, outcome) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, time.time(), who, action, rows, outcome),
            )

    def run_ids(self) -> list[str]:
        return [run_id for (run_id,) in self._run("SELECT run_id FROM runs ORDER BY created_at").fetchall()]

    def duplicate_key(self, run_id: str) -> tuple[str, int, int] | None:
        found = self._run(
            "SELECT idempotency_key, min(line), max(line) FROM requests WHERE run_id = ?"
            " GROUP BY idempotency_key HAVING count(*) > 1 ORDER BY max(line) LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if found is None else tuple(found)

    def _find_duplicate(self, run_id: str, rows: list[tuple]) -> DuplicateRow:
        """The row of a refused batch whose id was seen before (in the ledger or earlier in the batch). Inside a
        load's transaction the batch's rows before the refused statement are in the ledger: a row found
        on its own line is itself, no earlier row."""
        seen: dict[str, int] = {}
        for line, row_id, *_ in rows:
            found = self._run("SELECT line FROM requests WHERE run_id = ? AND row_id = ?", (run_id, row_id)).fetchone()
            earlier = found[0] if found is not None and found[0] != line else seen.get(row_id)
            if earlier is not None:
                return DuplicateRow(row_id, line, earlier)
            seen[row_id] = line
        return DuplicateRow("?", rows[0][0], rows[0][0])

    def select_rows(self, run_id: str, rows: RowFilter, row_ids: Iterable[str] = ()) -> int:
        where, params = rows.where(self.LIKE)
        update = (  # a row whose payload was dropped (--keep-payload none) cannot be sent again
            f"UPDATE requests SET status = '{SELECTED}' WHERE run_id = ? AND status <> '{SUCCEEDED}'"
            f" AND payload IS NOT NULL AND {where}"
        )
        ids = list(row_ids)
        with self._transaction():
            if not ids:
                return self._run(update, (run_id, *params)).rowcount
            selected = 0
            for start in range(0, len(ids), 500):
                batch = ids[start : start + 500]
                selected += self._run(
                    f"{update} AND row_id IN ({', '.join('?' for _ in batch)})", (run_id, *params, *batch)
                ).rowcount
            return selected
