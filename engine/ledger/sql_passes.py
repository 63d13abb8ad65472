"""The statements of :class:`~engine.ledger.roles.PassLedger`: a pass's pages, its recorded answers,
its lease and its pauses."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from engine.ledger import lease as leases
from engine.ledger.lease import Hold, Holder
from engine.ledger.roles import CANCELLED_FLAG, Page, PassLedger
from engine.ledger.sql_base import SQLBase
from engine.ledger.store import LeaseHeld, LeaseLost
from engine.states import RESOLVABLE, RESOLVED, UNKNOWN


class SQLPassLedger(SQLBase, PassLedger):
    """A pass's writes, in SQL."""

    def iter_pages(self, run_id: str, states: Iterable[str], page: int = 1000) -> Iterator[Page]:
        return self._pages(run_id, states, page)

    def record(self, attempts: list[tuple]) -> None:
        with self._transaction():
            self._write_attempts(attempts)

    def mark_state(self, run_id: str, states: Iterable[str], state: str) -> int:
        membership, state_params = self._in(states)
        with self._transaction():
            return self._run(
                f"UPDATE requests SET status = ? WHERE run_id = ? AND status {membership}",
                (state, run_id, *state_params),
            ).rowcount

    def mark_unknown(self, run_id: str, states: Iterable[str], reason: str) -> int:
        membership, state_params = self._in(states)
        with self._transaction():
            return self._run(
                f"UPDATE requests SET status = '{UNKNOWN}', error = ?, updated_at = ?"
                f" WHERE run_id = ? AND status {membership}",
                (reason, time.time(), run_id, *state_params),
            ).rowcount

    def start_pass(self, run_id: str) -> int:
        with self._exclusive(f"pass:{run_id}"):
            number = self._value("SELECT coalesce(max(pass_no), 0) + 1 FROM passes WHERE run_id = ?", (run_id,))
            self._run(
                "INSERT INTO passes (run_id, pass_no, started_at) VALUES (?, ?, ?)", (run_id, number, time.time())
            )
            # a cancel ends the pass it stopped; a later pass is started on purpose
            self._run(
                "UPDATE runs SET state = 'running', paused = CASE WHEN paused = ? THEN 0 ELSE paused END"
                " WHERE run_id = ?",
                (CANCELLED_FLAG, run_id),
            )
        return number

    def end_pass(self, run_id: str, pass_no: int, state: str) -> None:
        now = time.time()
        with self._transaction():
            self._run("UPDATE passes SET finished_at = ? WHERE run_id = ? AND pass_no = ?", (now, run_id, pass_no))
            self._run(
                "UPDATE pauses SET ended_at = ? WHERE run_id = ? AND pass_no = ? AND ended_at IS NULL",
                (now, run_id, pass_no),
            )
            self._run("UPDATE runs SET state = ? WHERE run_id = ?", (state, run_id))

    def acquire_lease(self, run_id: str, holder: Holder, timeout: float) -> Hold | None:
        now = time.time()
        with self._exclusive(f"lease:{run_id}"):
            old = self.lease(run_id)
            if old is not None and old["holder"] != holder.name and leases.holder_alive(old, now):
                raise LeaseHeld(
                    f"run {run_id!r} is being sent by {leases.describe(old, now)};"
                    " wait for it to end, or stop that process first"
                )
            hold = leases.hold_after(old) if old is not None else None
            frontier = hold.frontier if hold else (None, None)
            self._write_lease(run_id, holder, now, frontier, max(timeout, old["timeout"] if old else 0.0))
        return hold

    def renew_lease(self, run_id: str, holder: Holder, frontier: tuple[float, int] | None = None) -> None:
        with self._transaction():
            if frontier is None:
                changed = self._run(
                    "UPDATE leases SET heartbeat_at = ? WHERE run_id = ? AND holder = ?",
                    (time.time(), run_id, holder.name),
                ).rowcount
            else:
                changed = self._run(
                    "UPDATE leases SET heartbeat_at = ?, frontier_priority = ?, frontier_rid = ?"
                    " WHERE run_id = ? AND holder = ?",
                    (time.time(), *frontier, run_id, holder.name),
                ).rowcount
        if not changed:
            raise LeaseLost(f"run {run_id!r}: another process took over this run's lease; stopping")

    def release_lease(self, run_id: str, holder: Holder, clean: bool) -> None:
        with self._transaction():
            if clean:
                self._run("DELETE FROM leases WHERE run_id = ? AND holder = ?", (run_id, holder.name))
            else:
                self._run(
                    "UPDATE leases SET pid = 0, heartbeat_at = ? WHERE run_id = ? AND holder = ?",
                    (time.time(), run_id, holder.name),
                )

    def set_paused(self, run_id: str, paused: bool) -> None:
        with self._transaction():
            if not self._run("UPDATE runs SET paused = ? WHERE run_id = ?", (int(paused), run_id)).rowcount:
                raise self._unknown_run(run_id)  # an unknown run is said, not ignored

    def is_paused(self, run_id: str) -> bool:
        return bool(self._value("SELECT coalesce(max(paused), 0) FROM runs WHERE run_id = ?", (run_id,)))

    def cancel_run(self, run_id: str) -> None:
        with self._transaction():
            if not self._run("UPDATE runs SET paused = ? WHERE run_id = ?", (CANCELLED_FLAG, run_id)).rowcount:
                raise self._unknown_run(run_id)

    def is_cancelled(self, run_id: str) -> bool:
        return self._value("SELECT coalesce(max(paused), 0) FROM runs WHERE run_id = ?", (run_id,)) == CANCELLED_FLAG

    def mark_resolved(self, run_id: str, row_ids: Iterable[str]) -> int:
        ids = tuple(row_ids)
        if not ids:
            return 0
        membership, state_params = self._in(RESOLVABLE)
        with self._transaction():
            return self._run(
                f"UPDATE requests SET status = ?, updated_at = ? WHERE run_id = ? AND status {membership}"
                f" AND row_id IN ({', '.join('?' for _ in ids)})",
                (RESOLVED, time.time(), run_id, *state_params, *ids),
            ).rowcount

    def pause_began(self, run_id: str, reason: str) -> None:
        with self._transaction():
            self._run(
                "INSERT INTO pauses (run_id, pass_no, reason, started_at)"
                " SELECT run_id, max(pass_no), ?, ? FROM passes WHERE run_id = ? GROUP BY run_id",
                (reason, time.time(), run_id),
            )

    def pause_ended(self, run_id: str, reason: str) -> None:
        with self._transaction():
            self._run(
                "UPDATE pauses SET ended_at = ? WHERE run_id = ? AND reason = ? AND ended_at IS NULL",
                (time.time(), run_id, reason),
            )
