"""The queries every SQL store shares, written once: :class:`SQLStore`.

SQLite and PostgreSQL run the same statements on the same tables; a store says only how
its database differs (:attr:`SQLStore.PARAM`, how a transaction and an exclusive section
are opened, how an ``IN`` list is bound) and does the per-row paths its own fastest way.
Statements are written with ``?`` placeholders.
"""

from __future__ import annotations

import json
import secrets
import time
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, closing
from typing import Any

from engine.errors import UnknownRun
from engine.ledger import lease as leases
from engine.ledger.claim import ChunkClaim, superseded
from engine.ledger.lease import Hold, Holder
from engine.ledger.schema import SENT, UNSETTLED
from engine.ledger.selection import RowFilter
from engine.ledger.store import (
    EXPORT_COLUMNS,
    FOUND_COLUMNS,
    DuplicateRow,
    LeaseHeld,
    LeaseLost,
    Page,
    RunExists,
    Store,
)
from engine.states import (
    CHUNK_DEAD,
    CHUNK_DONE,
    CHUNK_QUEUED,
    CHUNK_RETIRED,
    CHUNK_RUNNING,
    PENDING,
    SELECTED,
    STATES,
    SUCCEEDED,
    UNKNOWN,
)
from engine.wire import Attempt, Dispatch


class SQLStore(Store):
    """A :class:`Store` over a DB-API connection ``conn``."""

    #: The database's placeholder for ``?`` in the statements below.
    PARAM = "?"
    #: The store's case-insensitive LIKE.
    LIKE = "LIKE"
    #: The database's clock, in epoch seconds: every lease time of a chunk is taken from it, so that
    #: nodes whose clocks differ by seconds still agree on who holds what.
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"
    conn: Any

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

    # -- runs ----------------------------------------------------------------

    def create_run(
        self, run_id: str, *, input: str, url: str, method: str, options: dict, not_before: float | None
    ) -> None:
        with self._transaction():
            self._run(
                "INSERT INTO runs (run_id, created_at, input, url, method, options, state, total, not_before)"
                " VALUES (?, ?, ?, ?, ?, ?, 'loading', 0, ?)",
                (run_id, time.time(), input, url, method, json.dumps(options, sort_keys=True), not_before),
            )

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
            self._run(
                "INSERT INTO runs (run_id, created_at, input, url, method, options, state, total, not_before)"
                " VALUES (?, ?, ?, ?, ?, ?, 'loading', 0, ?)",
                (run_id, now, input, url, method, json.dumps(options, sort_keys=True), not_before),
            )
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
            raise UnknownRun(f"no run {run_id!r} in {self.location}")
        run["options"] = json.loads(run["options"] or "{}")
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

    def run_ids(self) -> list[str]:
        return [run_id for (run_id,) in self._run("SELECT run_id FROM runs ORDER BY created_at").fetchall()]

    def list_runs(self) -> list[dict]:
        runs = self._run("SELECT run_id, created_at, state, total FROM runs ORDER BY created_at").fetchall()
        return [{"run_id": r, "created_at": c, "state": s, "total": t, **self.counts(r)} for r, c, s, t in runs]

    # -- loading -------------------------------------------------------------

    def duplicate_key(self, run_id: str) -> tuple[str, int, int] | None:
        found = self._run(
            "SELECT idempotency_key, min(line), max(line) FROM requests WHERE run_id = ?"
            " GROUP BY idempotency_key HAVING count(*) > 1 ORDER BY max(line) LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if found is None else tuple(found)

    def _find_duplicate(self, run_id: str, rows: list[tuple]) -> DuplicateRow:
        """The row of a refused batch whose id was seen before (in the ledger or earlier in the batch)."""
        seen: dict[str, int] = {}
        for line, row_id, *_ in rows:
            first = self._run("SELECT line FROM requests WHERE run_id = ? AND row_id = ?", (run_id, row_id)).fetchone()
            if first is not None or row_id in seen:
                return DuplicateRow(row_id, line, first[0] if first else seen[row_id])
            seen[row_id] = line
        return DuplicateRow("?", rows[0][0], rows[0][0])

    # -- sending -------------------------------------------------------------

    def iter_pages(self, run_id: str, states: Iterable[str], page: int = 1000) -> Iterator[Page]:
        """Keyset pagination (priority level, then rid) keeps every page an index seek."""
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
            self._run("UPDATE runs SET state = 'running' WHERE run_id = ?", (run_id,))
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

    # -- the lease: one pass per run at a time ---------------------------------

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

    def lease(self, run_id: str) -> dict | None:
        return self._row("SELECT * FROM leases WHERE run_id = ?", (run_id,))

    # -- chunks: runs sent through a broker to worker nodes ----------------------

    def plan_chunks(self, run_id: str, pass_no: int, states: Iterable[str], size: int) -> list[int]:
        states = tuple(states)
        chunk_ids: list[int] = []
        batch: list[int] = []
        for page in self.iter_pages(run_id, states):
            for row in page.rows:
                batch.append(row.rid)
                if len(batch) == size:
                    chunk_ids.append(self._new_chunk(run_id, pass_no, states, batch))
                    batch = []
        if batch:
            chunk_ids.append(self._new_chunk(run_id, pass_no, states, batch))
        return chunk_ids

    def _new_chunk(self, run_id: str, pass_no: int, states: tuple, rids: list[int]) -> int:
        with self._transaction():
            chunk_id = self._value(
                "INSERT INTO chunks (run_id, pass_no, rows, states, state, deliveries, refused, generation, queued_at)"
                f" VALUES (?, ?, ?, ?, '{CHUNK_QUEUED}', 0, 0, 0, {self.NOW}) RETURNING chunk_id",
                (run_id, pass_no, len(rids), ",".join(states)),
            )
            self._run_many("UPDATE requests SET chunk_id = ? WHERE rid = ?", [(chunk_id, rid) for rid in rids])
        return chunk_id

    def _run_many(self, sql: str, rows: list[tuple]) -> None:
        with closing(self.conn.cursor()) as cursor:
            cursor.executemany(sql if self.PARAM == "?" else sql.replace("?", self.PARAM), rows)

    def claim_chunk(self, chunk_id: int, node: str, max_deliveries: int, busy_for: float = 60.0) -> ChunkClaim | None:
        with self._exclusive(f"chunk:{chunk_id}"):
            found = self._run(
                f"SELECT state, deliveries, states, heartbeat_at > {self.NOW} - ?, generation FROM chunks"
                " WHERE chunk_id = ?",
                (busy_for, chunk_id),
            ).fetchone()
            if found is None:
                return None
            state, deliveries, states, busy, generation = found
            if state not in (CHUNK_QUEUED, CHUNK_RUNNING) or (state == CHUNK_RUNNING and busy):
                # finished, or another node is sending it: a second copy must not go out
                self._run("UPDATE chunks SET refused = refused + 1 WHERE chunk_id = ?", (chunk_id,))
                return None
            if deliveries >= max_deliveries:
                self._run(
                    f"UPDATE chunks SET state = '{CHUNK_DEAD}', finished_at = {self.NOW} WHERE chunk_id = ?",
                    (chunk_id,),
                )
                return None
            self._run(
                f"UPDATE chunks SET state = '{CHUNK_RUNNING}', deliveries = deliveries + 1, node = ?,"
                f" generation = generation + 1, heartbeat_at = {self.NOW} WHERE chunk_id = ?",
                (node, chunk_id),
            )
        membership, state_params = self._in(states.split(","))
        rows = self._run(
            "SELECT rid, row_id, payload, idempotency_key, attempts FROM requests"
            f" WHERE chunk_id = ? AND status {membership} ORDER BY priority DESC, rid",
            (chunk_id, *state_params),
        ).fetchall()
        return ChunkClaim(chunk_id, node, generation + 1, [Dispatch(*row) for row in rows])

    #: The condition under which a claim is still its holder's: running, by it, under its token.
    _HELD = f"chunk_id = ? AND node = ? AND generation = ? AND state = '{CHUNK_RUNNING}'"

    def renew_chunk(self, claim: ChunkClaim) -> bool:
        with self._transaction():
            return bool(
                self._run(
                    f"UPDATE chunks SET heartbeat_at = {self.NOW} WHERE {self._HELD}",
                    (claim.chunk_id, claim.node, claim.generation),
                ).rowcount
            )

    def finish_chunk(self, claim: ChunkClaim, attempts: list[tuple], complete: bool = True) -> bool:
        token = (claim.chunk_id, claim.node, claim.generation)
        with self._exclusive(f"chunk:{claim.chunk_id}"):  # claim_chunk's lock: no new token meanwhile
            held = self._run(f"SELECT 1 FROM chunks WHERE {self._HELD}", token).fetchone() is not None
            if not held:
                self._write_superseded(superseded(attempts, claim.generation))
                return False
            if attempts:
                self._write_attempts(attempts)
            if complete:  # else it stays running, unrenewed: queued again once silent (its in-flight timed out)
                self._run(
                    f"UPDATE chunks SET state = '{CHUNK_DONE}', finished_at = {self.NOW} WHERE {self._HELD}", token
                )
        return True

    def _write_superseded(self, attempts: list[tuple]) -> None:
        """Audit records only: the rows' state is the current holder's to write."""
        if attempts:
            fields = ", ".join(Attempt._fields)
            self._run_many(
                f"INSERT INTO attempts ({fields}) VALUES ({', '.join('?' for _ in Attempt._fields)})"
                " ON CONFLICT (rid, attempt) DO NOTHING",
                attempts,
            )

    def ledger_id(self) -> str:
        with self._transaction():
            self._run(
                "INSERT INTO meta (key, value) VALUES ('ledger_id', ?) ON CONFLICT (key) DO NOTHING",
                (secrets.token_hex(8),),
            )
            return self._value("SELECT value FROM meta WHERE key = 'ledger_id'", ())

    def chunk_counts(self, run_id: str, pass_no: int) -> dict[str, int]:
        counts = dict.fromkeys((CHUNK_QUEUED, CHUNK_RUNNING, CHUNK_DONE, CHUNK_DEAD), 0)
        counts.update(
            self._run(
                "SELECT state, count(*) FROM chunks WHERE run_id = ? AND pass_no = ? GROUP BY state", (run_id, pass_no)
            ).fetchall()
        )
        return counts

    def silent_chunks(self, run_id: str, pass_no: int, silent_for: float) -> list[int]:
        return self._queue_again(run_id, pass_no, CHUNK_RUNNING, "heartbeat_at", silent_for)

    def waiting_chunks(self, run_id: str, pass_no: int, queued_for: float) -> list[int]:
        return self._queue_again(run_id, pass_no, CHUNK_QUEUED, "queued_at", queued_for)

    def _queue_again(self, run_id: str, pass_no: int, state: str, column: str, older_than: float) -> list[int]:
        """The pass's chunks in ``state`` whose ``column`` is ``older_than`` seconds old by the database's
        clock (the only clock every node and the coordinator share): queued (again), as of now."""
        with self._transaction():
            found = [
                chunk_id
                for (chunk_id,) in self._run(
                    f"SELECT chunk_id FROM chunks WHERE run_id = ? AND pass_no = ? AND state = '{state}'"
                    f" AND {column} < {self.NOW} - ? ORDER BY chunk_id",
                    (run_id, pass_no, older_than),
                ).fetchall()
            ]
            self._run_many(
                f"UPDATE chunks SET state = '{CHUNK_QUEUED}', queued_at = {self.NOW}"
                f" WHERE chunk_id = ? AND state = '{state}'",
                [(chunk_id,) for chunk_id in found],
            )
        return found

    def retire_chunks(self, run_id: str, silent_for: float) -> int:
        with self._transaction():
            self._run(
                f"UPDATE chunks SET state = '{CHUNK_RETIRED}', finished_at = {self.NOW} WHERE run_id = ?"
                f" AND (state = '{CHUNK_QUEUED}' OR (state = '{CHUNK_RUNNING}' AND heartbeat_at < {self.NOW} - ?))",
                (run_id, silent_for),
            )
            return self._value(f"SELECT count(*) FROM chunks WHERE run_id = ? AND state = '{CHUNK_RUNNING}'", (run_id,))

    def chunk_summary(self, run_id: str) -> dict[str, int] | None:
        chunks, dead, resent, refused = self._run(
            f"SELECT count(*), coalesce(sum(CASE WHEN state = '{CHUNK_DEAD}' THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN deliveries > 1 THEN deliveries - 1 ELSE 0 END), 0), coalesce(sum(refused), 0)"
            " FROM chunks WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if not chunks:
            return None
        return {"chunks": chunks, "dead": dead, "resent": resent, "refused": refused}

    # -- reading ---------------------------------------------------------------

    def counts(self, run_id: str) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update(
            self._run(
                f"SELECT status, count(*) FROM requests WHERE run_id = ? AND {SENT} GROUP BY status",
                (run_id,),
            ).fetchall()
        )
        loaded = self._run("SELECT total FROM runs WHERE run_id = ? AND state <> 'loading'", (run_id,)).fetchone()
        total = loaded[0] if loaded else self._value("SELECT count(*) FROM requests WHERE run_id = ?", (run_id,))
        counts[PENDING] = total - sum(counts.values())
        return counts

    def count_in(self, run_id: str, states: Iterable[str]) -> int:
        membership, state_params = self._in(states)
        return self._value(
            f"SELECT count(*) FROM requests WHERE run_id = ? AND status {membership}", (run_id, *state_params)
        )

    def top_error(self, run_id: str) -> tuple[str, int] | None:
        found = self._run(
            "SELECT coalesce(error, 'HTTP ' || http_status), count(*) FROM requests WHERE run_id = ?"
            f" AND {UNSETTLED} AND (error IS NOT NULL OR http_status IS NOT NULL)"  # the failures' index
            " GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if found is None else tuple(found)

    def attempt_count(self, run_id: str) -> int:
        return int(self._value("SELECT coalesce(sum(attempts), 0) FROM requests WHERE run_id = ?", (run_id,)))

    def elapsed(self, run_id: str) -> float:
        return self._value(
            "SELECT coalesce(sum(coalesce(finished_at, started_at) - started_at), 0) FROM passes WHERE run_id = ?",
            (run_id,),
        )

    def status_counts(self, run_id: str) -> dict[str, int]:
        return dict(
            self._run(
                "SELECT coalesce(CAST(a.http_status AS TEXT), 'curl:' || a.curl_error), count(*)"
                " FROM requests r JOIN attempts a ON a.rid = r.rid WHERE r.run_id = ?"
                " GROUP BY 1 ORDER BY 1",
                (run_id,),
            ).fetchall()
        )

    # -- operators: triage, selective replay, pause ----------------------------------

    def find_rows(self, run_id: str, rows: RowFilter, after_rid: int = 0, limit: int = 100) -> list[dict]:
        where, params = rows.where(self.LIKE)
        found = self._run(
            f"SELECT rid, {', '.join(EXPORT_COLUMNS)}, payload,"
            " (SELECT excerpt FROM attempts a WHERE a.rid = requests.rid ORDER BY a.attempt DESC LIMIT 1)"
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

    def select_rows(self, run_id: str, rows: RowFilter, row_ids: Iterable[str] = ()) -> int:
        where, params = rows.where(self.LIKE)
        update = f"UPDATE requests SET status = '{SELECTED}' WHERE run_id = ? AND status <> '{SUCCEEDED}' AND {where}"
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

    def row_attempts(self, rid: int) -> list[dict]:
        cursor = self._run(f"SELECT {', '.join(Attempt._fields)} FROM attempts WHERE rid = ? ORDER BY attempt", (rid,))
        return [dict(zip(Attempt._fields, row, strict=True)) for row in cursor.fetchall()]

    def set_paused(self, run_id: str, paused: bool) -> None:
        self.get_run(run_id)  # an unknown run is said, not ignored
        with self._transaction():
            self._run("UPDATE runs SET paused = ? WHERE run_id = ?", (int(paused), run_id))

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

    def is_paused(self, run_id: str) -> bool:
        return bool(self._value("SELECT coalesce(max(paused), 0) FROM runs WHERE run_id = ?", (run_id,)))

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
