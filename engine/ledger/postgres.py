"""The PostgreSQL store (``--db postgresql://user@host/dbname``): the same tables and queries as SQLite.

For runs that outgrow one machine, or that several programs read while it runs. psycopg 3:
rows are loaded with binary COPY, attempts recorded with a binary COPY into a session-local
table and two set-based statements, one transaction per batch. A recorded result never
overwrites ``succeeded`` (a chunk delivered twice cannot undo a success). The password, if
any, comes from the environment (``PGPASSWORD`` or a ``~/.pgpass`` file, as every libpq
program reads them), never from the URL typed on a command line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict

from engine.errors import LedgerError, UsageError
from engine.ledger.ddl import PostgresDialect
from engine.ledger.migrations import migrate
from engine.ledger.retention import payload_after
from engine.ledger.schema import ATTEMPTS, REQUESTS, Table
from engine.ledger.sql import SQLStore
from engine.ledger.sql_reader import ANSWERED
from engine.ledger.store import BUSY_TIMEOUT, ledger_unavailable
from engine.states import IN_FLIGHT
from engine.wire import Attempt

#: A session idle inside a transaction this long is ended by the server (s): every transaction here runs its
#: statements back to back, so only a frozen process (a paused VM, SIGSTOP) waits this long, and the rows it
#: locked (its chunk, say) must not stop the coordinator and the other nodes from taking its work over.
IDLE_IN_TRANSACTION = 10.0

_ATTEMPT_FIELDS = ", ".join(Attempt._fields)
#: A batch of results on its way in: private to the connection, emptied at each commit.
_INCOMING_TABLE = "CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE attempts) ON COMMIT DELETE ROWS"
#: A chunk delivered twice may bring an attempt already recorded: the first one stays.
_INSERT_INCOMING = (
    f"INSERT INTO attempts ({_ATTEMPT_FIELDS}) SELECT {_ATTEMPT_FIELDS} FROM incoming"
    " ON CONFLICT (rid, attempt) DO NOTHING"
)
#: Each row takes its latest attempt of the batch; a late or repeated result never moves a row
#: out of 'succeeded', nor an older attempt over a newer one unless it succeeded; the
#: payload goes as the run's --keep-payload says.
_UPDATE_FROM_INCOMING = (
    "UPDATE requests SET attempts = i.attempt, status = i.outcome, http_status = i.http_status,"
    " curl_error = i.curl_error, error = i.error, latency_ms = i.duration_ms,"
    " captured = i.captured, replayed = i.replayed,"
    " updated_at = i.started_at + i.duration_ms / 1000.0,"
    f" payload = {payload_after('i.outcome')}"  # dropped as it succeeds (--keep-payload)
    " FROM (SELECT DISTINCT ON (rid) * FROM incoming ORDER BY rid, attempt DESC) AS i"
    " WHERE requests.rid = i.rid AND requests.status <> 'succeeded'"
    " AND (coalesce(requests.attempts, 0) <= i.attempt OR i.outcome = 'succeeded')"
)
_LOAD_COLUMNS = "run_id, line, row_id, priority, payload, idempotency_key, status, attempts, updated_at"
#: What binary COPY calls each Python type of the schema.
_COPY_TYPES = {int: "int8", float: "float8", str: "text"}


def _copy_types(table: Table, columns: str) -> list[str]:
    """The binary COPY types of ``columns`` (names, comma-separated) of ``table``: a row goes as its
    values' bytes, neither written as text here nor parsed there (half the client's CPU of a text COPY)."""
    return [_COPY_TYPES[table.column(name.strip()).kind] for name in columns.split(",")]


_LOAD_TYPES = _copy_types(REQUESTS, _LOAD_COLUMNS)
_ATTEMPT_TYPES = _copy_types(ATTEMPTS, _ATTEMPT_FIELDS)


class _NumberLoader(Loader):
    """PostgreSQL's ``numeric`` (what ``sum`` of a BIGINT is) as an int, or a float when it has a
    fraction: the store's figures are plain numbers on both ledgers, which JSON and CSV can write
    (psycopg's default, ``Decimal``, is not JSON serialisable)."""

    def load(self, data) -> int | float:
        text = bytes(data).decode()
        return int(text) if text.lstrip("-").isdigit() else float(text)


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


class PostgresStore(SQLStore):
    """A ledger in a PostgreSQL database (its tables are created if missing)."""

    def __init__(self, url: str, create: bool = True, busy_timeout: float = BUSY_TIMEOUT):
        _check_no_password(url)
        self.location = url  # never holds a password (checked above)
        self.busy_timeout = busy_timeout
        self.conn = self._connect()
        self._incoming_ready = False
        try:  # a database is made by its administrator; the tables are made here, whatever ``create`` says
            migrate(PostgresDialect(self.conn), self.location)
        except psycopg.OperationalError as err:
            raise LedgerError(f"--db {self.location}: cannot use the ledger: {_first_line(err)}") from None

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.location, connect_timeout=max(1, int(self.busy_timeout)), autocommit=True)
            conn.execute(f"SET lock_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute(f"SET idle_in_transaction_session_timeout = {int(IDLE_IN_TRANSACTION * 1000)}")
            conn.adapters.register_loader("numeric", _NumberLoader)
        except psycopg.OperationalError as err:
            raise _cannot_connect(self.location, err) from None
        return conn

    def close(self) -> None:
        self.conn.close()

    def connection_lost(self, error: Exception) -> bool:
        return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError, LedgerError)) or self.conn.broken

    def reconnect(self) -> None:
        """A new connection after the server broke the last one (restarted); LedgerError while it is away."""
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
        self.conn = self._connect()
        self._incoming_ready = False

    @contextmanager
    def recording(self):
        """A lost connection, a lock held too long or a full disk on the server: one line, nothing more sent."""
        try:
            yield self
        except (
            psycopg.OperationalError,
            pg_errors.DiskFull,
            pg_errors.LockNotAvailable,
            pg_errors.IdleInTransactionSessionTimeout,  # this process was frozen inside a transaction
        ) as err:
            raise ledger_unavailable(self.location, f"cannot be written: {_first_line(err)}") from None

    def check_space(self, rows: int) -> None:
        """The server's disk is not visible from here; a full one is reported when a write fails."""

    # -- how PostgreSQL differs --------------------------------------------------

    PARAM = "%s"
    #: The server's clock, read at each statement (``now()`` would be the transaction's start).
    NOW = "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)"
    LIKE = "ILIKE"
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    HAS_CAPTURE = "jsonb_exists(CAST(captured AS jsonb) -> 'values', ?)"

    def _transaction(self):
        return self.conn.transaction()

    @contextmanager
    def _exclusive(self, name: str):
        """A transaction holding an advisory lock on ``name``: writers of the same name queue."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))
            yield

    def _in(self, values: Iterable[str]) -> tuple[str, tuple]:
        return "= ANY(?)", (list(values),)

    # -- the per-row paths, and what reads are PostgreSQL's own ---------------------

    def insert_requests(self, run_id: str, rows: list[tuple]) -> None:
        now = time.time()
        try:
            with self.conn.transaction(), self.conn.cursor() as cursor:
                with cursor.copy(f"COPY requests ({_LOAD_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(_LOAD_TYPES)
                    for line, row_id, priority, payload, key in rows:
                        copy.write_row((run_id, line, row_id, priority, payload, key, "pending", 0, now))
        except pg_errors.UniqueViolation:
            raise self._find_duplicate(run_id, rows) from None

    def loading(self):
        return contextlib.nullcontext()  # each COPY commits: the server writes index pages at its checkpoints

    def _write_attempts(self, attempts: list[tuple]) -> None:
        """COPY the batch into a session-local table, then one set-based insert and one update: a few
        µs a row on both sides, where a statement per row costs tens (bench/scale_out.py)."""
        with self.conn.cursor() as cursor:
            if not self._incoming_ready:
                cursor.execute(_INCOMING_TABLE)
                self._incoming_ready = True
            with cursor.copy(f"COPY incoming ({_ATTEMPT_FIELDS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_ATTEMPT_TYPES)
                for attempt in attempts:
                    copy.write_row(attempt)
            cursor.execute(_INSERT_INCOMING)
            cursor.execute(_UPDATE_FROM_INCOMING)

    def _set_chunk(self, chunk_id: int, rids: list[int]) -> None:
        """One statement per chunk: a statement per row cost a million round trips to plan a million rows."""
        self.conn.execute("UPDATE requests SET chunk_id = %s WHERE rid = ANY(%s)", (chunk_id, rids))

    def mark_in_flight(self, rids: list[int]) -> None:
        self.conn.execute("UPDATE requests SET status = %s WHERE rid = ANY(%s)", (IN_FLIGHT, list(rids)))

    def latency_percentiles(
        self, run_id: str, quantiles: Iterable[float], ranked: Callable[[], int] | None = None
    ) -> dict[float, float | None]:
        """``percentile_disc`` is the nearest rank: the first value whose cumulative share reaches q (the
        server counts the rows itself: ``ranked`` is not needed)."""
        quantiles = list(quantiles)
        values = self._value(
            "SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY latency_ms) FROM requests"
            f" WHERE run_id = %s AND {ANSWERED}",
            (quantiles, run_id),
        )
        return dict(zip(quantiles, values or [None] * len(quantiles), strict=True))


def _cannot_connect(url: str, err: psycopg.OperationalError) -> LedgerError:
    """The one line for a ledger that cannot be reached; a database not created yet says how to create it."""
    sqlstate = getattr(getattr(err, "diag", None), "sqlstate", None)
    # a failed connection carries no SQLSTATE: the server's text names the database
    if sqlstate == pg_errors.InvalidCatalogName.sqlstate or ("database" in str(err) and "does not exist" in str(err)):
        return LedgerError(f"--db {url}: the PostgreSQL database does not exist; create it first: {createdb_line(url)}")
    return LedgerError(f"--db {url}: cannot use the ledger: {_first_line(err)}")


def createdb_line(url: str) -> str:
    """The ``createdb`` command that makes the database ``url`` names (the ledger's tables are made here)."""
    params = conninfo_to_dict(url)
    options = [
        f"{flag} {params[key]}" for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U")) if params.get(key)
    ]
    database = params.get("dbname") or params.get("user") or "postgres"  # libpq's own default
    return " ".join(["createdb", *options, str(database)])


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
