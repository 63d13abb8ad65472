"""The SQLite store: the embedded default ledger, one file.

One file records every run, every request (one row per input row) and every
attempt. It is written by one process, the coordinator, in batched transactions;
WAL mode lets ``status`` and ``report`` read it while a run is going.

sqlite-utils creates the declared schema (:mod:`engine.ledger.schema`, versioned by
:mod:`engine.ledger.migrations`); the per-row paths use prepared statements, which cost a
fraction of building a dict per row, many rows to a statement (:mod:`engine.ledger.sqlite_rows`).
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import closing, contextmanager

import sqlite_utils

from engine.errors import LedgerError, LedgerUnavailable
from engine.ledger.ddl import SQLiteDialect
from engine.ledger.migrations import migrate
from engine.ledger.sql import SQLStore
from engine.ledger.sql_reader import ANSWERED
from engine.ledger.sqlite_rows import insert_pending, write_attempts
from engine.ledger.store import BUSY_TIMEOUT, ledger_unavailable, nearest_ranks
from engine.states import IN_FLIGHT

#: The ``--db`` of a ledger in memory: the same contract as a file, for a pass's unit tests; it is gone
#: once closed, and only the process (the connection) that opened it sees it.
MEMORY = ":memory:"
#: Free disk space a pass needs before it sends anything: a reserve, plus this much per row to send.
SPACE_RESERVE = 4_000_000
SPACE_PER_ROW = 1_000
#: Mode of a new ledger file (and of its -wal and -shm files): its owner's only.
LEDGER_FILE_MODE = 0o600
#: Page cache of the writer (KiB): big enough that loading a million rows stays in memory.
CACHE_KIB = 65_536


def _create_private(path: str) -> None:
    """Create the ledger file readable by its owner only: it holds customers' payloads. SQLite gives
    the ``-wal`` and ``-shm`` files beside it the same mode; an existing file is left as it is."""
    if path == MEMORY or path.startswith("file:") or os.path.exists(path):
        return
    with contextlib.suppress(FileExistsError):  # another process made it meanwhile
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, LEDGER_FILE_MODE))


def _cannot_record_now(err: sqlite3.Error) -> bool:
    """A lock, a full disk or an I/O error: the ledger is fine, it just cannot be written now."""
    text = str(err).lower()
    return any(word in text for word in ("locked", "busy", "full", "disk i/o"))


class SQLiteStore(SQLStore):
    """Open (creating if needed) the ledger file at ``path``; :data:`MEMORY` holds it in memory instead."""

    def __init__(self, path: str, create: bool = True, busy_timeout: float = BUSY_TIMEOUT):
        self.path = self.location = path
        self.busy_timeout = busy_timeout
        self._loading = False  # inside loading(): inserts leave the commit to it
        if not create and path != MEMORY and not os.path.exists(path):
            raise LedgerError(f"no ledger at {path} (give its path with --db)")
        try:
            _create_private(path)
            self.conn = sqlite3.connect(path, timeout=busy_timeout)
            self.db = sqlite_utils.Database(self.conn)
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            migrate(SQLiteDialect(self.db), path)
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
        if self.path == MEMORY:
            return
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

    # -- how SQLite differs ------------------------------------------------------

    def _transaction(self):
        return self.conn  # sqlite3: commits on success, rolls back on an exception

    @contextmanager
    def _exclusive(self, name: str):
        """BEGIN IMMEDIATE takes the file's write lock at once: read-then-write without a race."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _in(self, values: Iterable[str]) -> tuple[str, tuple]:
        values = tuple(values)
        return f"IN ({','.join('?' * len(values))})", values

    # -- the per-row paths, and what reads are SQLite's own ------------------------

    def insert_requests(self, run_id: str, rows: list[tuple]) -> None:
        """Insert ``(line, row_id, priority, payload, idempotency_key)`` rows as ``pending``, in input order.

        A duplicate id raises :class:`DuplicateRow` naming the row and the line seen first.
        """
        now = time.time()
        try:
            with contextlib.nullcontext() if self._loading else self.conn:
                insert_pending(self.conn, run_id, now, rows)
        except sqlite3.IntegrityError:  # the statement was undone, the transaction stays: its rows are seen
            raise self._find_duplicate(run_id, rows) from None

    @contextmanager
    def loading(self):
        self._loading = True
        try:
            with self.conn:  # commits at the end, rolls back on an exception
                yield
        finally:
            self._loading = False

    def _write_attempts(self, attempts: list[tuple]) -> None:
        write_attempts(self.conn, attempts)

    def mark_in_flight(self, rids: list[int]) -> None:
        """Write ahead that these rows are being sent (runs without idempotency keys only)."""
        with self.conn:
            self.conn.executemany(f"UPDATE requests SET status = '{IN_FLIGHT}' WHERE rid = ?", [(r,) for r in rids])

    def latency_percentiles(
        self, run_id: str, quantiles: Iterable[float], ranked: Callable[[], int] | None = None
    ) -> dict[float, float | None]:
        """Nearest-rank percentiles of the latency of each row's last attempt that got an answer.

        One sorted scan, picking the ranks as they pass: constant memory for any run size. Once sorted, the
        rows are counted in the same read, unless ``ranked`` says how many there are.
        """
        where = f"FROM requests WHERE run_id = ? AND {ANSWERED}"
        with closing(self.conn.execute(f"SELECT latency_ms {where} ORDER BY latency_ms", (run_id,))) as rows:
            count = ranked() if ranked is not None else self._value(f"SELECT count(*) {where}", (run_id,))
            return nearest_ranks(map(operator.itemgetter(0), rows), count, quantiles)
