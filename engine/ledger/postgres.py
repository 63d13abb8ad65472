"""The PostgreSQL store (``--db postgresql://user@host/dbname``): the same tables and queries as SQLite.

For runs that outgrow one machine, or that several programs read while it runs. psycopg 3:
rows are loaded with COPY, attempts recorded with pipelined ``executemany`` in one
transaction per batch. A recorded result never overwrites ``succeeded`` (a chunk delivered
twice cannot undo a success). The password, if any, comes from the environment
(``PGPASSWORD`` or a ``~/.pgpass`` file, as every libpq program reads them), never from
the URL typed on a command line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from engine.errors import LedgerError, UsageError
from engine.ledger import lease as leases
from engine.ledger.lease import Hold, Holder
from engine.ledger.postgres_reads import PostgresReads, as_dict
from engine.ledger.schema import postgres_schema
from engine.ledger.store import (
    DuplicateRow,
    LeaseHeld,
    LeaseLost,
    Page,
    Store,
    ledger_unavailable,
)
from engine.states import IN_FLIGHT, UNKNOWN
from engine.wire import Attempt, Dispatch

_INSERT_ATTEMPT = (
    f"INSERT INTO attempts ({', '.join(Attempt._fields)}) VALUES ({', '.join('%s' for _ in Attempt._fields)})"
    " ON CONFLICT (rid, attempt) DO NOTHING"
)
# a late or repeated result never moves a row out of 'succeeded'
_UPDATE_REQUEST = (
    "UPDATE requests SET attempts = %s, status = %s, http_status = %s, curl_error = %s, error = %s,"
    " latency_ms = %s, updated_at = %s WHERE rid = %s AND status <> 'succeeded'"
)
_LOAD_COLUMNS = "run_id, line, row_id, priority, payload, idempotency_key, status, attempts, updated_at"


def _check_no_password(url: str) -> None:
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as err:
        raise UsageError(f"--db: not a PostgreSQL URL: {err}") from None
    if params.get("password"):
        raise UsageError(
            "--db: a password in the URL would be in the process list and the ledger's messages; "
            "put it in PGPASSWORD or ~/.pgpass instead"
        )


class PostgresStore(PostgresReads, Store):
    """A ledger in a PostgreSQL database (its tables are created if missing)."""

    def __init__(self, url: str, create: bool = True, busy_timeout: float = 30.0):
        _check_no_password(url)
        self.location = url  # never holds a password (checked above)
        try:
            self.conn = psycopg.connect(url, connect_timeout=max(1, int(busy_timeout)), autocommit=True)
            self.conn.execute(f"SET lock_timeout = {int(busy_timeout * 1000)}")
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('batch-engine schema'))")
                for statement in postgres_schema():
                    self.conn.execute(statement)
        except psycopg.OperationalError as err:
            raise LedgerError(f"--db {self.location}: cannot use the ledger: {_first_line(err)}") from None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def recording(self):
        """A lost connection, a lock held too long or a full disk on the server: one line, nothing more sent."""
        try:
            yield self
        except (psycopg.OperationalError, pg_errors.DiskFull, pg_errors.LockNotAvailable) as err:
            raise ledger_unavailable(self.location, f"cannot be written: {_first_line(err)}") from None

    def check_space(self, rows: int) -> None:
        """The server's disk is not visible from here; a full one is reported when a write fails."""

    # -- runs ----------------------------------------------------------------

    def create_run(
        self, run_id: str, *, input: str, url: str, method: str, options: dict, not_before: float | None
    ) -> None:
        self.conn.execute(
            "INSERT INTO runs (run_id, created_at, input, url, method, options, state, total, not_before)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'loading', 0, %s)",
            (run_id, time.time(), input, url, method, json.dumps(options, sort_keys=True), not_before),
        )

    def get_run(self, run_id: str) -> dict:
        cursor = self.conn.execute("SELECT * FROM runs WHERE run_id = %s", (run_id,))
        row = cursor.fetchone()
        if row is None:
            raise LedgerError(f"no run {run_id!r} in {self.location}")
        run = as_dict(cursor, row)
        run["options"] = json.loads(run["options"] or "{}")
        return run

    def has_run(self, run_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,)).fetchone() is not None

    def delete_run(self, run_id: str) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM attempts WHERE rid IN (SELECT rid FROM requests WHERE run_id = %s)", (run_id,)
            )
            for table in ("requests", "passes", "leases", "runs"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))

    def finish_load(self, run_id: str, total: int, fingerprint: str) -> str | None:
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (fingerprint,))
            other = self.conn.execute(
                "SELECT run_id FROM runs WHERE fingerprint = %s AND run_id <> %s", (fingerprint, run_id)
            ).fetchone()
            if other is not None:
                return other[0]
            self.conn.execute(
                "UPDATE runs SET state = 'ready', total = %s, fingerprint = %s WHERE run_id = %s",
                (total, fingerprint, run_id),
            )
        return None

    # -- loading -------------------------------------------------------------

    def insert_requests(self, run_id: str, rows: list[tuple]) -> None:
        now = time.time()
        try:
            with self.conn.transaction(), self.conn.cursor() as cursor:
                with cursor.copy(f"COPY requests ({_LOAD_COLUMNS}) FROM STDIN") as copy:
                    for line, row_id, priority, payload, key in rows:
                        copy.write_row((run_id, line, row_id, priority, payload, key, "pending", 0, now))
        except pg_errors.UniqueViolation:
            raise self._find_duplicate(run_id, rows) from None

    def _find_duplicate(self, run_id: str, rows: list[tuple]) -> DuplicateRow:
        seen: dict[str, int] = {}
        for line, row_id, *_ in rows:
            first = self.conn.execute(
                "SELECT line FROM requests WHERE run_id = %s AND row_id = %s", (run_id, row_id)
            ).fetchone()
            if first is not None or row_id in seen:
                return DuplicateRow(row_id, line, first[0] if first else seen[row_id])
            seen[row_id] = line
        return DuplicateRow("?", rows[0][0], rows[0][0])

    def duplicate_key(self, run_id: str) -> tuple[str, int, int] | None:
        found = self.conn.execute(
            "SELECT idempotency_key, min(line), max(line) FROM requests WHERE run_id = %s"
            " GROUP BY idempotency_key HAVING count(*) > 1 ORDER BY max(line) LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if found is None else tuple(found)

    # -- sending -------------------------------------------------------------

    def iter_pages(self, run_id: str, states: Iterable[str], page: int = 1000) -> Iterator[Page]:
        states = list(states)
        level = self._value("SELECT max(priority) FROM requests WHERE run_id = %s", (run_id,))
        while level is not None:
            after = 0
            while True:
                rows = self.conn.execute(
                    "SELECT rid, row_id, payload, idempotency_key, attempts FROM requests"
                    " WHERE run_id = %s AND priority = %s AND rid > %s AND status = ANY(%s) ORDER BY rid LIMIT %s",
                    (run_id, level, after, states, page),
                ).fetchall()
                if not rows:
                    break
                after = rows[-1][0]
                yield Page(level, [Dispatch(*row) for row in rows])
            level = self._value(
                "SELECT max(priority) FROM requests WHERE run_id = %s AND priority < %s", (run_id, level)
            )

    def record(self, attempts: list[tuple]) -> None:
        updates = [
            (
                a.attempt,
                a.outcome,
                a.http_status,
                a.curl_error,
                a.error,
                a.duration_ms,
                a.started_at + a.duration_ms / 1000.0,
                a.rid,
            )
            for a in map(Attempt._make, attempts)
        ]
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.executemany(_INSERT_ATTEMPT, attempts)
            cursor.executemany(_UPDATE_REQUEST, updates)

    def mark_in_flight(self, rids: list[int]) -> None:
        self.conn.execute("UPDATE requests SET status = %s WHERE rid = ANY(%s)", (IN_FLIGHT, list(rids)))

    def mark_state(self, run_id: str, states: Iterable[str], state: str) -> int:
        return self.conn.execute(
            "UPDATE requests SET status = %s WHERE run_id = %s AND status = ANY(%s)", (state, run_id, list(states))
        ).rowcount

    def mark_unknown(self, run_id: str, states: Iterable[str], reason: str) -> int:
        return self.conn.execute(
            "UPDATE requests SET status = %s, error = %s, updated_at = %s WHERE run_id = %s AND status = ANY(%s)",
            (UNKNOWN, reason, time.time(), run_id, list(states)),
        ).rowcount

    def start_pass(self, run_id: str) -> int:
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"pass:{run_id}",))
            number = self._value("SELECT coalesce(max(pass_no), 0) + 1 FROM passes WHERE run_id = %s", (run_id,))
            self.conn.execute(
                "INSERT INTO passes (run_id, pass_no, started_at) VALUES (%s, %s, %s)", (run_id, number, time.time())
            )
            self.conn.execute("UPDATE runs SET state = 'running' WHERE run_id = %s", (run_id,))
        return number

    def end_pass(self, run_id: str, pass_no: int, state: str) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE passes SET finished_at = %s WHERE run_id = %s AND pass_no = %s", (time.time(), run_id, pass_no)
            )
            self.conn.execute("UPDATE runs SET state = %s WHERE run_id = %s", (state, run_id))

    # -- the lease -------------------------------------------------------------

    def acquire_lease(self, run_id: str, holder: Holder, timeout: float) -> Hold | None:
        now = time.time()
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"lease:{run_id}",))
            old = self.lease(run_id)
            if old is not None and leases.holder_alive(old, now):
                raise LeaseHeld(
                    f"run {run_id!r} is being sent by {leases.describe(old, now)};"
                    " wait for it to end, or stop that process first"
                )
            hold = leases.hold_after(old) if old is not None else None
            frontier = hold.frontier if hold else (None, None)
            self.conn.execute(
                "INSERT INTO leases (run_id, holder, host, pid, heartbeat_at, frontier_priority, frontier_rid, timeout)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE SET holder = EXCLUDED.holder,"
                " host = EXCLUDED.host, pid = EXCLUDED.pid, heartbeat_at = EXCLUDED.heartbeat_at,"
                " frontier_priority = EXCLUDED.frontier_priority, frontier_rid = EXCLUDED.frontier_rid,"
                " timeout = EXCLUDED.timeout",
                (
                    run_id,
                    holder.name,
                    holder.host,
                    holder.pid,
                    now,
                    *frontier,
                    max(timeout, old["timeout"] if old else 0.0),
                ),
            )
        return hold

    def renew_lease(self, run_id: str, holder: Holder, frontier: tuple[float, int] | None = None) -> None:
        if frontier is None:
            changed = self.conn.execute(
                "UPDATE leases SET heartbeat_at = %s WHERE run_id = %s AND holder = %s",
                (time.time(), run_id, holder.name),
            ).rowcount
        else:
            changed = self.conn.execute(
                "UPDATE leases SET heartbeat_at = %s, frontier_priority = %s, frontier_rid = %s"
                " WHERE run_id = %s AND holder = %s",
                (time.time(), *frontier, run_id, holder.name),
            ).rowcount
        if not changed:
            raise LeaseLost(f"run {run_id!r}: another process took over this run's lease; stopping")

    def release_lease(self, run_id: str, holder: Holder, clean: bool) -> None:
        if clean:
            self.conn.execute("DELETE FROM leases WHERE run_id = %s AND holder = %s", (run_id, holder.name))
        else:
            self.conn.execute(
                "UPDATE leases SET pid = 0, heartbeat_at = %s WHERE run_id = %s AND holder = %s",
                (time.time(), run_id, holder.name),
            )

    def lease(self, run_id: str) -> dict | None:
        cursor = self.conn.execute("SELECT * FROM leases WHERE run_id = %s", (run_id,))
        row = cursor.fetchone()
        return None if row is None else as_dict(cursor, row)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
