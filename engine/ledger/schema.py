"""The ledger's tables: their columns and keys, the same in every store.

Each table is a mapping of column name to Python type; a store turns it into its own
DDL (:func:`create_sqlite_schema` here for SQLite, through sqlite-utils). The column
order of ``attempts`` is the field order of :class:`engine.wire.Attempt`, so a batch of
attempt tuples is inserted as it arrives.
"""

from __future__ import annotations

import sqlite_utils

from engine.states import PENDING, SUCCEEDED
from engine.wire import Attempt

RUN_COLUMNS = {
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
}
REQUEST_COLUMNS = {
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
}
ATTEMPT_COLUMNS = {
    "rid": int,
    "attempt": int,
    "outcome": str,
    "http_status": int,
    "curl_error": int,
    "error": str,
    "excerpt": str,
    "started_at": float,
    "duration_ms": float,
}
assert tuple(ATTEMPT_COLUMNS) == Attempt._fields
PASS_COLUMNS = {"run_id": str, "pass_no": int, "started_at": float, "finished_at": float}
#: One row per period a pass paused: the endpoint was down, or an operator paused the run.
PAUSE_COLUMNS = {"run_id": str, "pass_no": int, "reason": str, "started_at": float, "ended_at": float}
#: One row per chunk handed to a worker node (runs sent through a broker); its rows carry its id.
CHUNK_COLUMNS = {
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
}
#: Facts about the ledger itself, written once: its ``ledger_id`` (which nodes compare).
META_COLUMNS = {"key": str, "value": str}
#: One row per run being sent (or left behind by a pass that did not end cleanly).
LEASE_COLUMNS = {
    "run_id": str,
    "holder": str,
    "host": str,
    "pid": int,
    "heartbeat_at": float,
    "frontier_priority": float,
    "frontier_rid": int,
    "timeout": float,
}
#: Rows of a chunk (runs sent through worker nodes). Partial: rows never chunked (every local run)
#: cost nothing to load.
REQUESTS_BY_CHUNK = "CREATE INDEX IF NOT EXISTS requests_chunk ON requests (chunk_id) WHERE chunk_id IS NOT NULL"
#: Two partial indexes of requests, and the condition a query repeats word for word to use one:
#: rows that were sent, by run and state (counts per state, as the dashboard reads them every
#: second: one entry per row sent), and rows that were sent and did not succeed (the failures
#: pages, in input order: no entry at all for a row that succeeds).
SENT = f"status <> '{PENDING}'"
UNSETTLED = f"status NOT IN ('{PENDING}', '{SUCCEEDED}')"
REQUESTS_SENT = f"CREATE INDEX IF NOT EXISTS requests_sent ON requests (run_id, status) WHERE {SENT}"
REQUESTS_UNSETTLED = f"CREATE INDEX IF NOT EXISTS requests_unsettled ON requests (run_id) WHERE {UNSETTLED}"
_SQLITE_TYPES = {int: "INTEGER", float: "FLOAT", str: "TEXT"}


def create_sqlite_schema(db: sqlite_utils.Database) -> None:
    """Create what is missing (an older ledger gains its new columns); idempotent."""
    db.table("runs").create(RUN_COLUMNS, pk="run_id", if_not_exists=True)
    db.table("requests").create(REQUEST_COLUMNS, pk="rid", if_not_exists=True, not_null=["run_id", "row_id"])
    db.table("requests").create_index(["run_id", "row_id"], unique=True, if_not_exists=True)
    db.table("requests").create_index(["run_id", "priority", "rid"], if_not_exists=True)
    if "attempts" not in db.table_names():
        columns = ", ".join(f"{name} {_SQLITE_TYPES[kind]}" for name, kind in ATTEMPT_COLUMNS.items())
        # one clustered B-tree, appended in (rid, attempt) order: the cheapest insert there is
        # (sqlite-utils cannot say WITHOUT ROWID)
        db.execute(f"CREATE TABLE attempts ({columns}, PRIMARY KEY (rid, attempt)) WITHOUT ROWID")
    db.table("passes").create(PASS_COLUMNS, pk=("run_id", "pass_no"), if_not_exists=True)
    db.table("leases").create(LEASE_COLUMNS, pk="run_id", if_not_exists=True)
    db.table("pauses").create(PAUSE_COLUMNS, pk=("run_id", "pass_no", "started_at"), if_not_exists=True)
    if "fingerprint" not in db.table("runs").columns_dict:  # a ledger written by an older version
        db.table("runs").add_column("fingerprint", str)
    if "paused" not in db.table("runs").columns_dict:
        db.table("runs").add_column("paused", int)
    db.table("runs").create_index(["fingerprint"], if_not_exists=True)
    db.table("chunks").create(CHUNK_COLUMNS, pk="chunk_id", if_not_exists=True)
    db.table("chunks").create_index(["run_id", "state"], if_not_exists=True)
    if "refused" not in db.table("chunks").columns_dict:  # chunks tables made before the counter
        db.table("chunks").add_column("refused", int, not_null_default=0)
    if "generation" not in db.table("chunks").columns_dict:  # chunks tables made before fencing tokens
        db.table("chunks").add_column("generation", int, not_null_default=0)
    if "chunk_id" not in db.table("requests").columns_dict:
        db.table("requests").add_column("chunk_id", int)
    db.table("meta").create(META_COLUMNS, pk="key", if_not_exists=True)
    db.execute(REQUESTS_BY_CHUNK)
    db.execute(REQUESTS_SENT)
    db.execute(REQUESTS_UNSETTLED)


_POSTGRES_TYPES = {int: "BIGINT", float: "DOUBLE PRECISION", str: "TEXT"}


def _postgres_columns(columns: dict, overrides: dict | None = None) -> str:
    overrides = overrides or {}
    return ", ".join(f"{name} {overrides.get(name, _POSTGRES_TYPES[kind])}" for name, kind in columns.items())


#: Column types of the PostgreSQL ledger that differ from the plain mapping.
_POSTGRES_REQUEST_TYPES = {
    "rid": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    "run_id": "TEXT NOT NULL",
    "row_id": "TEXT NOT NULL",
}


def postgres_schema() -> list[str]:
    """The same tables, columns and indexes as the SQLite ledger, as PostgreSQL DDL (idempotent)."""
    requests = _postgres_columns(REQUEST_COLUMNS, _POSTGRES_REQUEST_TYPES)
    chunks = _postgres_columns(CHUNK_COLUMNS, {"chunk_id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"})
    return [
        f"CREATE TABLE IF NOT EXISTS runs ({_postgres_columns(RUN_COLUMNS)}, PRIMARY KEY (run_id))",
        # room in each page for a row's updates: they stay in its page, no index touched (HOT)
        f"CREATE TABLE IF NOT EXISTS requests ({requests}) WITH (fillfactor = 70)",
        "CREATE UNIQUE INDEX IF NOT EXISTS requests_run_row ON requests (run_id, row_id)",
        "CREATE INDEX IF NOT EXISTS requests_run_priority_rid ON requests (run_id, priority, rid)",
        f"CREATE TABLE IF NOT EXISTS attempts ({_postgres_columns(ATTEMPT_COLUMNS)}, PRIMARY KEY (rid, attempt))",
        f"CREATE TABLE IF NOT EXISTS passes ({_postgres_columns(PASS_COLUMNS)}, PRIMARY KEY (run_id, pass_no))",
        f"CREATE TABLE IF NOT EXISTS pauses ({_postgres_columns(PAUSE_COLUMNS)},"
        " PRIMARY KEY (run_id, pass_no, started_at))",
        f"CREATE TABLE IF NOT EXISTS leases ({_postgres_columns(LEASE_COLUMNS)}, PRIMARY KEY (run_id))",
        "CREATE INDEX IF NOT EXISTS runs_fingerprint ON runs (fingerprint)",
        f"CREATE TABLE IF NOT EXISTS chunks ({chunks})",
        "CREATE INDEX IF NOT EXISTS chunks_run_state ON chunks (run_id, state)",
        "ALTER TABLE requests ADD COLUMN IF NOT EXISTS chunk_id BIGINT",
        "ALTER TABLE chunks ADD COLUMN IF NOT EXISTS refused BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS paused BIGINT",
        "ALTER TABLE chunks ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 0",
        f"CREATE TABLE IF NOT EXISTS meta ({_postgres_columns(META_COLUMNS)}, PRIMARY KEY (key))",
        REQUESTS_BY_CHUNK,
    ]
