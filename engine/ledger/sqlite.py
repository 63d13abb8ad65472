"""The SQLite store: the embedded default ledger, one file.

One file records every run, every request (one row per input row) and every
attempt. It is written by one process, the coordinator, in batched transactions;
WAL mode lets ``status`` and ``report`` read it while a run is going.

sqlite-utils creates and migrates the schema (:mod:`engine.ledger.schema`); the
per-row paths (loading, recording, paging) use the standard library's ``executemany``
on prepared statements, which costs a fraction of building a dict per row.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import sqlite_utils

from engine.errors import LedgerError, LedgerUnavailable
from engine.ledger import lease as leases
from engine.ledger.lease import Hold, Holder
from engine.ledger.schema import create_sqlite_schema
from engine.ledger.sqlite_reads import SQLiteReads, in_list
from engine.ledger.store import DuplicateRow, LeaseHeld, LeaseLost, Page, Store, ledger_unavailable
from engine.states import IN_FLIGHT, UNKNOWN
from engine.wire import Attempt, Dispatch

#: How long a write waits for another program's lock on the ledger before giving up (s; --busy-timeout).
BUSY_TIMEOUT = 30.0
#: Free disk space a pass needs before it sends anything: a reserve, plus this much per row to send.
SPACE_RESERVE = 4_000_000
SPACE_PER_ROW = 1_000
#: Page cache of the writer (KiB): big enough that loading a million rows stays in memory.
CACHE_KIB = 65_536

# numbered parameters (?1 = rid, ?2 = attempt, ...: the Attempt fields in order) reuse each
# attempt tuple as it is; the excerpt only goes to the attempts table
_P = {name: f"?{number}" for number, name in enumerate(Attempt._fields, 1)}
_INSERT_ATTEMPT = f"INSERT INTO attempts ({', '.join(Attempt._fields)}) VALUES ({', '.join(_P.values())})"
_UPDATE_REQUEST = (
    f"UPDATE requests SET attempts = {_P['attempt']}, status = {_P['outcome']}, http_status = {_P['http_status']},"
    f" curl_error = {_P['curl_error']}, error = {_P['error']}, latency_ms = {_P['duration_ms']},"
    f" updated_at = {_P['started_at']} + {_P['duration_ms']} / 1000.0 WHERE rid = {_P['rid']}"
    " AND status != 'succeeded'"  # a late or repeated result never undoes a success
)


def _cannot_record_now(err: sqlite3.Error) -> bool:
    """A lock, a full disk or an I/O error: the ledger is fine, it just cannot be written now."""
    text = str(err).lower()
    return any(word in text for word in ("locked", "busy", "full", "disk i/o"))


class SQLiteStore(SQLiteReads, Store):
    """Open (creating if needed) the ledger file at ``path``."""

    def __init__(self, path: str, create: bool = True, busy_timeout: float = BUSY_TIMEOUT):
        self.path = self.location = path
        self.busy_timeout = busy_timeout
        if not create and not os.path.exists(path):
            raise LedgerError(f"no ledger at {path} (give its path with --db)")
        try:
            self.conn = sqlite3.connect(path, timeout=busy_timeout)
            self.db = sqlite_utils.Database(self.conn)
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            create_sqlite_schema(self.db)
        except sqlite3.DatabaseError as err:
            if _cannot_record_now(err):
                raise self.failure(err) from None
            raise LedgerError(f"--db {path}: cannot use the ledger: {err}") from None

    def failure(self, err: sqlite3.Error | OSError) -> LedgerUnavailable:
        """The one line for a write the ledger (or the log beside it) could not make."""
        text = str(err).lower()
        if "locked" in text or "busy" in text:
            why = (
                f"is locked by another program (waited {self.busy_timeout:g} s; see --busy-timeout); "
                "stop that program or wait for it"
            )
        elif "full" in text or getattr(err, "errno", None) == errno.ENOSPC:
            why = "cannot be written: the disk is full; free some space"
        else:
            why = f"cannot be written: {err}"
        return ledger_unavailable(self.path, why)

    @contextmanager
    def recording(self):
        """Turn a write the disk or a lock refused (here or in the log) into one :class:`LedgerUnavailable`."""
        try:
            yield self
        except sqlite3.OperationalError as err:
            raise self.failure(err) from None
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise
            raise LedgerUnavailable(
                f"{err.filename or 'the event log'} cannot be written: {err.strerror}. "
                "Nothing is sent that cannot be recorded"
            ) from None

    def check_space(self, rows: int) -> None:
        """Refuse to start sending ``rows`` when the ledger's disk clearly cannot record their answers."""
        folder = os.path.dirname(os.path.abspath(self.path))
        free = shutil.disk_usage(folder).free
        needed = SPACE_RESERVE + rows * SPACE_PER_ROW
        if free < needed:
            raise LedgerUnavailable(
                f"ledger {self.path}: only {free / 1e6:.1f} MB free on its disk, and recording {rows} rows needs "
                f"about {needed / 1e6:.1f} MB; free some space. Nothing was sent"
            )

    def close(self) -> None:
        self.conn.close()

    # -- runs ---------------------------------------------------------------

    def create_run(
        self, run_id: str, *, input: str, url: str, method: str, options: dict, not_before: float | None
    ) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs (run_id, created_at, input, url, method, options, state, total, not_before)"
                " VALUES (?, ?, ?, ?, ?, ?, 'loading', 0, ?)",
                (run_id, time.time(), input, url, method, json.dumps(options, sort_keys=True), not_before),
            )

    def get_run(self, run_id: str) -> dict:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no run {run_id!r} in {self.path}")
        run = dict(zip([c[0] for c in self.conn.execute("SELECT * FROM runs LIMIT 0").description], row, strict=True))
        run["options"] = json.loads(run["options"] or "{}")
        return run

    def has_run(self, run_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def delete_run(self, run_id: str) -> None:
        with self.conn:
            self.conn.execute(
                "DELETE FROM attempts WHERE rid IN (SELECT rid FROM requests WHERE run_id = ?)", (run_id,)
            )
            for table in ("requests", "passes", "runs"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

    def finish_load(self, run_id: str, total: int, fingerprint: str) -> str | None:
        """Mark a loaded run ready, unless another run has the same fingerprint: return that one's id.

        One transaction, so of two identical commands loading at once exactly one wins.
        """
        with self._immediate():
            other = self.conn.execute(
                "SELECT run_id FROM runs WHERE fingerprint = ? AND run_id != ?", (fingerprint, run_id)
            ).fetchone()
            if other is not None:
                return other[0]
            self.conn.execute(
                "UPDATE runs SET state = 'ready', total = ?, fingerprint = ? WHERE run_id = ?",
                (total, fingerprint, run_id),
            )
        return None

    # -- loading ------------------------------------------------------------

    def insert_requests(self, run_id: str, rows: list[tuple]) -> None:
        """Insert ``(line, row_id, priority, payload, idempotency_key)`` rows as ``pending``.

        A duplicate id raises :class:`DuplicateRow` naming the row and the line seen first.
        """
        now = time.time()
        try:
            with self.conn:
                self.conn.executemany(
                    "INSERT INTO requests (run_id, line, row_id, priority, payload, idempotency_key,"
                    " status, attempts, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?)",
                    [(run_id, *row, now) for row in rows],
                )
        except sqlite3.IntegrityError:
            raise self._find_duplicate(run_id, rows) from None

    def duplicate_key(self, run_id: str) -> tuple[str, int, int] | None:
        """Two rows of a run with one idempotency key: ``(key, first line, second line)``, or None."""
        found = self.conn.execute(
            "SELECT idempotency_key, min(line), max(line) FROM requests WHERE run_id = ?"
            " GROUP BY idempotency_key HAVING count(*) > 1 ORDER BY max(line) LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if found is None else tuple(found)

    def _find_duplicate(self, run_id: str, rows: list[tuple]) -> DuplicateRow:
        seen: dict[str, int] = {}
        for line, row_id, *_ in rows:
            first = self.conn.execute(
                "SELECT line FROM requests WHERE run_id = ? AND row_id = ?", (run_id, row_id)
            ).fetchone()
            if first is not None or row_id in seen:
                return DuplicateRow(row_id, line, first[0] if first else seen[row_id])
            seen[row_id] = line
        return DuplicateRow("?", rows[0][0], rows[0][0])

    # -- dispatch -----------------------------------------------------------

    def iter_pages(self, run_id: str, states: Iterable[str], page: int = 1000) -> Iterator[Page]:
        """Keyset pagination (priority level, then rid) keeps every page an index seek."""
        states = tuple(states)
        marks = in_list(states)
        level = self.conn.execute("SELECT max(priority) FROM requests WHERE run_id = ?", (run_id,)).fetchone()[0]
        while level is not None:
            after = 0
            while True:
                rows = self.conn.execute(
                    "SELECT rid, row_id, payload, idempotency_key, attempts FROM requests"
                    f" WHERE run_id = ? AND priority = ? AND rid > ? AND status IN ({marks})"
                    " ORDER BY rid LIMIT ?",
                    (run_id, level, after, *states, page),
                ).fetchall()
                if not rows:
                    break
                after = rows[-1][0]
                yield Page(level, [Dispatch(*row) for row in rows])
            level = self.conn.execute(
                "SELECT max(priority) FROM requests WHERE run_id = ? AND priority < ?", (run_id, level)
            ).fetchone()[0]

    # -- recording ----------------------------------------------------------

    def record(self, attempts: list[tuple]) -> None:
        """Write a batch of attempts (:class:`Attempt` tuples) and move their rows to their new state."""
        with self.conn:
            self.conn.executemany(_INSERT_ATTEMPT, attempts)
            self.conn.executemany(_UPDATE_REQUEST, attempts)

    def mark_in_flight(self, rids: list[int]) -> None:
        """Write ahead that these rows are being sent (runs without idempotency keys only)."""
        with self.conn:
            self.conn.executemany(f"UPDATE requests SET status = '{IN_FLIGHT}' WHERE rid = ?", [(r,) for r in rids])

    def mark_state(self, run_id: str, states: Iterable[str], state: str) -> int:
        """Rows of ``run_id`` in ``states`` move to ``state``; how many."""
        states = tuple(states)
        with self.conn:
            return self.conn.execute(
                f"UPDATE requests SET status = ? WHERE run_id = ? AND status IN ({in_list(states)})",
                (state, run_id, *states),
            ).rowcount

    def mark_unknown(self, run_id: str, states: Iterable[str], reason: str) -> int:
        """Rows of ``run_id`` in ``states`` become ``unknown`` (they may have been sent); how many."""
        states = tuple(states)
        with self.conn:
            return self.conn.execute(
                f"UPDATE requests SET status = '{UNKNOWN}', error = ?, updated_at = ?"
                f" WHERE run_id = ? AND status IN ({in_list(states)})",
                (reason, time.time(), run_id, *states),
            ).rowcount

    def start_pass(self, run_id: str) -> int:
        with self.conn:
            number = self.conn.execute(
                "SELECT coalesce(max(pass_no), 0) + 1 FROM passes WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            self.conn.execute(
                "INSERT INTO passes (run_id, pass_no, started_at) VALUES (?, ?, ?)", (run_id, number, time.time())
            )
            self.conn.execute("UPDATE runs SET state = 'running' WHERE run_id = ?", (run_id,))
        return number

    def end_pass(self, run_id: str, pass_no: int, state: str) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE passes SET finished_at = ? WHERE run_id = ? AND pass_no = ?", (time.time(), run_id, pass_no)
            )
            self.conn.execute("UPDATE runs SET state = ? WHERE run_id = ?", (state, run_id))

    # -- the lease: one pass per run at a time ------------------------------

    def acquire_lease(self, run_id: str, holder: Holder, timeout: float) -> Hold | None:
        """Take the run's lease; raise :class:`LeaseHeld` if a live process has it.

        A lease left by a pass that did not end cleanly is taken over, keeping its frontier,
        and what that pass may still have in flight is returned as a :class:`Hold`.
        """
        now = time.time()
        with self._immediate():
            old = self._lease(run_id)
            if old is not None and leases.holder_alive(old, now):
                raise LeaseHeld(
                    f"run {run_id!r} is being sent by {leases.describe(old, now)};"
                    " wait for it to end, or stop that process first"
                )
            hold = leases.hold_after(old) if old is not None else None
            self.conn.execute(
                "INSERT OR REPLACE INTO leases (run_id, holder, host, pid, heartbeat_at, frontier_priority,"
                " frontier_rid, timeout) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    holder.name,
                    holder.host,
                    holder.pid,
                    now,
                    *(hold.frontier if hold else (None, None)),
                    max(timeout, old["timeout"] if old else 0.0),
                ),
            )
        return hold

    def renew_lease(self, run_id: str, holder: Holder, frontier: tuple[float, int] | None = None) -> None:
        """Heartbeat, and move the dispatch frontier forward; :class:`LeaseLost` if it was taken over."""
        with self.conn:
            if frontier is None:
                changed = self.conn.execute(
                    "UPDATE leases SET heartbeat_at = ? WHERE run_id = ? AND holder = ?",
                    (time.time(), run_id, holder.name),
                ).rowcount
            else:
                changed = self.conn.execute(
                    "UPDATE leases SET heartbeat_at = ?, frontier_priority = ?, frontier_rid = ?"
                    " WHERE run_id = ? AND holder = ?",
                    (time.time(), *frontier, run_id, holder.name),
                ).rowcount
        if not changed:
            raise LeaseLost(f"run {run_id!r}: another process took over this run's lease; stopping")

    def release_lease(self, run_id: str, holder: Holder, clean: bool) -> None:
        """Give the lease up. After an unclean end (requests may be in flight) it stays, ownerless,
        so the next pass waits out what may still be in progress."""
        with self.conn:
            if clean:
                self.conn.execute("DELETE FROM leases WHERE run_id = ? AND holder = ?", (run_id, holder.name))
            else:
                self.conn.execute(
                    "UPDATE leases SET pid = 0, heartbeat_at = ? WHERE run_id = ? AND holder = ?",
                    (time.time(), run_id, holder.name),
                )

    def lease(self, run_id: str) -> dict | None:
        return self._lease(run_id)

    def _lease(self, run_id: str) -> dict | None:
        cursor = self.conn.execute("SELECT * FROM leases WHERE run_id = ?", (run_id,))
        row = cursor.fetchone()
        return None if row is None else dict(zip([c[0] for c in cursor.description], row, strict=True))

    @contextmanager
    def _immediate(self):
        """A write transaction that takes the write lock at once (read-then-write without a race)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
