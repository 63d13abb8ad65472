"""The ledger's tables, columns, keys and indexes, declared once for every dialect.

:data:`TABLES` and :data:`INDEXES` are plain values; :mod:`engine.ledger.migrations` renders
them for SQLite (through sqlite-utils) and as PostgreSQL DDL, and applies them in versioned
steps. The column order of ``attempts`` is the field order of :class:`engine.wire.Attempt`,
so a batch of attempt tuples is inserted as it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.states import PENDING, SUCCEEDED
from engine.wire import Attempt


@dataclass(frozen=True)
class Column:
    """A column: its Python type (each dialect names its own), and whether it is ``NOT NULL DEFAULT 0``."""

    name: str
    kind: type
    not_null: bool = False
    default: int | None = None


@dataclass(frozen=True)
class Table:
    """A table: its columns in order, its primary key, and how each dialect stores it best."""

    name: str
    columns: tuple[Column, ...]
    pk: tuple[str, ...]
    #: The pk is one integer the database numbers itself (SQLite's rowid, PostgreSQL's identity).
    identity: bool = False
    #: SQLite: one clustered B-tree keyed by the pk (sqlite-utils cannot say ``WITHOUT ROWID``).
    without_rowid: bool = False
    #: PostgreSQL storage parameters, e.g. ``fillfactor = 70``.
    storage: str = ""

    def column(self, name: str) -> Column:
        return next(column for column in self.columns if column.name == name)


@dataclass(frozen=True)
class Index:
    """An index; ``where`` makes it partial (a query repeats the condition word for word to use it)."""

    name: str
    table: str
    columns: tuple[str, ...]
    unique: bool = False
    where: str | None = None


def _columns(spec: dict[str, type], not_null: tuple[str, ...] = (), zero: tuple[str, ...] = ()) -> tuple[Column, ...]:
    return tuple(
        Column(name, kind, not_null=name in not_null or name in zero, default=0 if name in zero else None)
        for name, kind in spec.items()
    )


RUNS = Table(
    "runs",
    _columns(
        {
            "run_id": str,
            "created_at": float,
            "input": str,
            "url": str,
            "method": str,
            "options": str,
            "state": str,
            "total": int,
            "not_before": float,
            "fingerprint": str,
            "paused": int,
            # retention (engine.ledger.retention): which payloads a recorded answer drops, and once the
            # run's rows and attempts are purged, when, and its summary (JSON) that reports read instead
            "keep_payload": str,
            "purged_at": float,
            "summary": str,
        }
    ),
    pk=("run_id",),
)
REQUESTS = Table(
    "requests",
    _columns(
        {
            "rid": int,
            "run_id": str,
            "line": int,
            "row_id": str,
            "priority": float,
            "payload": str,
            "idempotency_key": str,
            "status": str,
            "attempts": int,
            "http_status": int,
            "curl_error": int,
            "error": str,
            "latency_ms": float,
            "updated_at": float,
            "chunk_id": int,
            # the --capture values of the row's last answer (JSON text), and whether the API marked that
            # answer Idempotent-Replayed (a success replayed: an earlier attempt's charge, not a new one)
            "captured": str,
            "replayed": int,
        },
        not_null=("run_id", "row_id"),
        zero=("replayed",),
    ),
    pk=("rid",),
    identity=True,
    # room in each page for a row's updates: they stay in its page, no index touched (HOT)
    storage="fillfactor = 70",
)
ATTEMPTS = Table(
    "attempts",
    _columns(
        {
            "rid": int,
            "attempt": int,
            "outcome": str,
            "http_status": int,
            "curl_error": int,
            "error": str,
            "excerpt": str,
            "started_at": float,
            "duration_ms": float,
            "captured": str,
            "replayed": int,
        },
        zero=("replayed",),
    ),
    pk=("rid", "attempt"),
    # appended in (rid, attempt) order: the cheapest insert there is
    without_rowid=True,
)
assert tuple(column.name for column in ATTEMPTS.columns) == Attempt._fields
PASSES = Table(
    "passes",
    _columns({"run_id": str, "pass_no": int, "started_at": float, "finished_at": float}),
    ("run_id", "pass_no"),
)
#: One row per period a pass paused: the endpoint was down, or an operator paused the run.
PAUSES = Table(
    "pauses",
    _columns({"run_id": str, "pass_no": int, "reason": str, "started_at": float, "ended_at": float}),
    pk=("run_id", "pass_no", "started_at"),
)
#: One row per run being sent (or left behind by a pass that did not end cleanly).
LEASES = Table(
    "leases",
    _columns(
        {
            "run_id": str,
            "holder": str,
            "host": str,
            "pid": int,
            "heartbeat_at": float,
            "frontier_priority": float,
            "frontier_rid": int,
            "timeout": float,
        }
    ),
    pk=("run_id",),
)
#: One row per chunk handed to a worker node (runs sent through a broker); its rows carry its id.
CHUNKS = Table(
    "chunks",
    _columns(
        {
            "chunk_id": int,
            "run_id": str,
            "pass_no": int,
            "rows": int,
            "states": str,
            "state": str,
            "deliveries": int,
            "refused": int,
            "node": str,
            "generation": int,
            "heartbeat_at": float,
            "queued_at": float,
            "finished_at": float,
        },
        zero=("refused", "generation"),
    ),
    pk=("chunk_id",),
    identity=True,
)
#: One row per action an operator took from the dashboard (pause, resume, rerun): who, when, what,
#: which rows, and how it ended, refused ones included.
AUDIT = Table(
    "audit",
    _columns({"audit_id": int, "run_id": str, "at": float, "who": str, "action": str, "rows": str, "outcome": str}),
    pk=("audit_id",),
    identity=True,
)
#: Facts about the ledger itself, written once: its ``ledger_id`` (which nodes compare).
META = Table("meta", _columns({"key": str, "value": str}), pk=("key",))
#: One row per migration applied to this ledger (:mod:`engine.ledger.migrations`): its version is the highest.
SCHEMA_VERSION = Table("schema_version", _columns({"version": int, "applied_at": float, "why": str}), pk=("version",))
TABLES = {table.name: table for table in (RUNS, REQUESTS, ATTEMPTS, PASSES, PAUSES, LEASES, CHUNKS, META, AUDIT)}

#: Two partial indexes of requests, and the condition a query repeats word for word to use one:
#: rows that were sent, by run and state (counts per state, as the dashboard reads them every
#: second: one entry per row sent), and rows that were sent and did not succeed (the failures
#: pages, in input order: no entry at all for a row that succeeds).
SENT = f"status <> '{PENDING}'"
UNSETTLED = f"status NOT IN ('{PENDING}', '{SUCCEEDED}')"
#: Named as sqlite-utils names an index, on both dialects (PostgreSQL ledgers are renamed to match).
INDEXES = {
    index.name: index
    for index in (
        Index("idx_requests_run_id_row_id", "requests", ("run_id", "row_id"), unique=True),
        Index("idx_requests_run_id_priority_rid", "requests", ("run_id", "priority", "rid")),
        Index("idx_runs_fingerprint", "runs", ("fingerprint",)),
        Index("idx_chunks_run_id_state", "chunks", ("run_id", "state")),
        Index("idx_audit_run_id", "audit", ("run_id", "audit_id")),
        # rows of a chunk; partial: rows never chunked (every local run) cost nothing to load
        Index("requests_chunk", "requests", ("chunk_id",), where="chunk_id IS NOT NULL"),
        Index("requests_sent", "requests", ("run_id", "status"), where=SENT),
        Index("requests_unsettled", "requests", ("run_id",), where=UNSETTLED),
    )
}
