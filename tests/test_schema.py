"""The declared schema, rendered per dialect, and its versions.

Both dialects must create the same indexes (they once did not: PostgreSQL lacked the partial
ones); a ledger written by the previous release (its DDL, from 073f6b9, is copied below) opens
and comes out the same as a new one; a ledger newer than this code is refused in one line.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import psycopg
import pytest

from engine.errors import LedgerTooNew
from engine.ledger import open_store
from engine.ledger.lease import Holder
from engine.ledger.migrations import LATEST, MIGRATIONS
from engine.ledger.schema import INDEXES, TABLES

#: What ``create_sqlite_schema`` of 073f6b9 (the release before versions) made, in order.
OLD_SQLITE = [
    'CREATE TABLE "runs" ("run_id" TEXT PRIMARY KEY, "created_at" REAL, "input" TEXT, "url" TEXT, "method" TEXT,'
    ' "options" TEXT, "state" TEXT, "total" INTEGER, "not_before" REAL, "fingerprint" TEXT, "paused" INTEGER)',
    'CREATE TABLE "requests" ("rid" INTEGER PRIMARY KEY, "run_id" TEXT NOT NULL, "line" INTEGER,'
    ' "row_id" TEXT NOT NULL, "priority" REAL, "payload" TEXT, "idempotency_key" TEXT, "status" TEXT,'
    ' "attempts" INTEGER, "http_status" INTEGER, "curl_error" INTEGER, "error" TEXT, "latency_ms" REAL,'
    ' "updated_at" REAL, "chunk_id" INTEGER)',
    'CREATE UNIQUE INDEX "idx_requests_run_id_row_id" ON "requests" ("run_id", "row_id")',
    'CREATE INDEX "idx_requests_run_id_priority_rid" ON "requests" ("run_id", "priority", "rid")',
    "CREATE TABLE attempts (rid INTEGER, attempt INTEGER, outcome TEXT, http_status INTEGER, curl_error INTEGER,"
    " error TEXT, excerpt TEXT, started_at FLOAT, duration_ms FLOAT, PRIMARY KEY (rid, attempt)) WITHOUT ROWID",
    'CREATE TABLE "passes" ("run_id" TEXT, "pass_no" INTEGER, "started_at" REAL, "finished_at" REAL,'
    ' PRIMARY KEY ("run_id", "pass_no"))',
    'CREATE TABLE "leases" ("run_id" TEXT PRIMARY KEY, "holder" TEXT, "host" TEXT, "pid" INTEGER,'
    ' "heartbeat_at" REAL, "frontier_priority" REAL, "frontier_rid" INTEGER, "timeout" REAL)',
    'CREATE TABLE "pauses" ("run_id" TEXT, "pass_no" INTEGER, "reason" TEXT, "started_at" REAL, "ended_at" REAL,'
    ' PRIMARY KEY ("run_id", "pass_no", "started_at"))',
    'CREATE INDEX "idx_runs_fingerprint" ON "runs" ("fingerprint")',
    'CREATE TABLE "chunks" ("chunk_id" INTEGER PRIMARY KEY, "run_id" TEXT, "pass_no" INTEGER, "rows" INTEGER,'
    ' "states" TEXT, "state" TEXT, "deliveries" INTEGER, "refused" INTEGER, "node" TEXT, "heartbeat_at" REAL,'
    ' "queued_at" REAL, "finished_at" REAL)',
    'CREATE INDEX "idx_chunks_run_id_state" ON "chunks" ("run_id", "state")',
    "CREATE INDEX requests_chunk ON requests (chunk_id) WHERE chunk_id IS NOT NULL",
    "CREATE INDEX requests_sent ON requests (run_id, status) WHERE status <> 'pending'",
    "CREATE INDEX requests_unsettled ON requests (run_id) WHERE status NOT IN ('pending', 'succeeded')",
]
#: What ``postgres_schema()`` of 073f6b9 made: other index names, and no partial indexes of sent rows.
OLD_POSTGRES = [
    "CREATE TABLE runs (run_id TEXT, created_at DOUBLE PRECISION, input TEXT, url TEXT, method TEXT, options TEXT,"
    " state TEXT, total BIGINT, not_before DOUBLE PRECISION, fingerprint TEXT, paused BIGINT, PRIMARY KEY (run_id))",
    "CREATE TABLE requests (rid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id TEXT NOT NULL, line BIGINT,"
    " row_id TEXT NOT NULL, priority DOUBLE PRECISION, payload TEXT, idempotency_key TEXT, status TEXT,"
    " attempts BIGINT, http_status BIGINT, curl_error BIGINT, error TEXT, latency_ms DOUBLE PRECISION,"
    " updated_at DOUBLE PRECISION) WITH (fillfactor = 70)",
    "CREATE UNIQUE INDEX requests_run_row ON requests (run_id, row_id)",
    "CREATE INDEX requests_run_priority_rid ON requests (run_id, priority, rid)",
    "CREATE TABLE attempts (rid BIGINT, attempt BIGINT, outcome TEXT, http_status BIGINT, curl_error BIGINT,"
    " error TEXT, excerpt TEXT, started_at DOUBLE PRECISION, duration_ms DOUBLE PRECISION, PRIMARY KEY (rid, attempt))",
    "CREATE TABLE passes (run_id TEXT, pass_no BIGINT, started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION,"
    " PRIMARY KEY (run_id, pass_no))",
    "CREATE TABLE pauses (run_id TEXT, pass_no BIGINT, reason TEXT, started_at DOUBLE PRECISION,"
    " ended_at DOUBLE PRECISION, PRIMARY KEY (run_id, pass_no, started_at))",
    "CREATE TABLE leases (run_id TEXT, holder TEXT, host TEXT, pid BIGINT, heartbeat_at DOUBLE PRECISION,"
    " frontier_priority DOUBLE PRECISION, frontier_rid BIGINT, timeout DOUBLE PRECISION, PRIMARY KEY (run_id))",
    "CREATE INDEX runs_fingerprint ON runs (fingerprint)",
    "CREATE TABLE chunks (chunk_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id TEXT, pass_no BIGINT,"
    " rows BIGINT, states TEXT, state TEXT, deliveries BIGINT, refused BIGINT, node TEXT,"
    " heartbeat_at DOUBLE PRECISION, queued_at DOUBLE PRECISION, finished_at DOUBLE PRECISION)",
    "CREATE INDEX chunks_run_state ON chunks (run_id, state)",
    "ALTER TABLE requests ADD COLUMN chunk_id BIGINT",
    "CREATE INDEX requests_chunk ON requests (chunk_id) WHERE chunk_id IS NOT NULL",
]
#: One run of two rows, one of them answered, as the old release left it.
OLD_ROWS = [
    "INSERT INTO runs (run_id, created_at, input, url, method, options, state, total, fingerprint)"
    " VALUES ('old', 1, 'in.csv', 'http://x/{id}', 'POST', '{}', 'finished', 2, 'f')",
    "INSERT INTO requests (run_id, line, row_id, priority, payload, idempotency_key, status, attempts)"
    " VALUES ('old', 2, 'a', 0, '{}', 'k-a', 'succeeded', 1), ('old', 3, 'b', 0, '{}', 'k-b', 'pending', 0)",
    "INSERT INTO attempts (rid, attempt, outcome, http_status, started_at, duration_ms)"
    " VALUES (1, 1, 'succeeded', 200, 1, 5)",
]


def _normalised(condition: str | None) -> str | None:
    """A partial index's condition as either dialect prints it, in one spelling."""
    if condition is None:
        return None
    text = condition.lower().replace("::text", "").replace("<> all", "not in").replace("array[", "")
    return " ".join(re.sub(r"[()\[\]\"]", " ", text).split())


def sqlite_indexes(path: str) -> dict[str, tuple]:
    with sqlite3.connect(path) as conn:
        found = conn.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        indexes = {}
        for name, table, sql in found.fetchall():
            columns = tuple(row[2] for row in conn.execute(f"PRAGMA index_info({name})").fetchall())
            where = sql.split(" WHERE ", 1)[1] if " WHERE " in sql else None
            indexes[name] = (table, columns, sql.startswith("CREATE UNIQUE"), _normalised(where))
    return indexes


def postgres_indexes(url: str) -> dict[str, tuple]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT indexname, tablename, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema() AND indexname NOT LIKE '%%_pkey'"
        )
        indexes = {}
        for name, table, definition in found.fetchall():
            columns = re.search(r"USING btree \(([^)]*)\)", definition).group(1)  # type: ignore[union-attr]
            where = definition.split(" WHERE ", 1)[1] if " WHERE " in definition else None
            unique = definition.startswith("CREATE UNIQUE")
            indexes[name] = (table, tuple(columns.split(", ")), unique, _normalised(where))
    return indexes


def declared_indexes() -> dict[str, tuple]:
    return {i.name: (i.table, i.columns, i.unique, _normalised(i.where)) for i in INDEXES.values()}


def columns(store) -> dict[str, set[str]]:
    """Each table's columns, as the ledger has them."""
    query = (
        "SELECT name FROM pragma_table_info(?)"
        if type(store).__name__ == "SQLiteStore"
        else "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = %s"
    )
    return {table: {name for (name,) in store.conn.execute(query, (table,)).fetchall()} for table in TABLES}


def versions(store) -> list[int]:
    return [version for (version,) in store.conn.execute("SELECT version FROM schema_version ORDER BY version")]


def test_both_dialects_create_the_same_indexes_the_declared_ones(tmp_path, postgres_url):
    open_store(str(tmp_path / "l.db")).close()
    open_store(postgres_url).close()
    assert sqlite_indexes(str(tmp_path / "l.db")) == declared_indexes()
    assert postgres_indexes(postgres_url) == declared_indexes()
    assert {"requests_sent", "requests_unsettled"} <= set(postgres_indexes(postgres_url))


def test_a_new_ledger_has_every_declared_column_at_the_latest_version(any_db):
    with open_store(any_db) as store:
        assert columns(store) == {name: {c.name for c in table.columns} for name, table in TABLES.items()}
        assert versions(store) == [migration.version for migration in MIGRATIONS] == list(range(1, LATEST + 1))


def old_ledger(db: str) -> None:
    """A ledger as 073f6b9 left it, with one run in it."""
    if db.startswith("postgresql"):
        with psycopg.connect(db, autocommit=True) as conn:
            for statement in OLD_POSTGRES + OLD_ROWS:
                conn.execute(statement)
    else:
        with sqlite3.connect(db) as conn:
            for statement in OLD_SQLITE + OLD_ROWS:
                conn.execute(statement)


def test_a_ledger_of_the_previous_release_opens_migrated_and_keeps_its_runs(any_db, tmp_path):
    old_ledger(any_db)
    with open_store(any_db) as store:
        assert versions(store) == list(range(1, LATEST + 1))
        assert columns(store)["chunks"] >= {"generation", "refused"} and "meta" in columns(store)
        assert store.get_run("old")["state"] == "finished"
        assert store.counts("old")["succeeded"] == 1 and store.row_attempts(1)[0]["http_status"] == 200
        assert store.ledger_id()  # the identity table the old release lacked
        store.claim_run(
            "new", Holder.this_process(), input="x", url="u", method="POST", options={}, not_before=None, timeout=1
        )
        assert store.has_run("new")
    fresh = str(tmp_path / "fresh.db")
    open_store(fresh).close()
    if any_db.startswith("postgresql"):
        assert postgres_indexes(any_db) == sqlite_indexes(fresh)
    else:
        assert sqlite_indexes(any_db) == sqlite_indexes(fresh)


def test_opening_a_current_ledger_again_applies_nothing(any_db):
    open_store(any_db).close()
    with open_store(any_db) as store:
        assert versions(store) == list(range(1, LATEST + 1))


def test_a_ledger_newer_than_this_code_is_refused_in_one_line(any_db, tmp_path):
    with open_store(any_db) as store:
        store.conn.execute("INSERT INTO schema_version (version, applied_at, why) VALUES (99, 0, 'from the future')")
        if hasattr(store.conn, "commit"):
            store.conn.commit()
    with pytest.raises(LedgerTooNew, match=f"schema version 99, newer than this batch-engine reads \\({LATEST}\\)"):
        open_store(any_db)
    done = subprocess.run(
        [sys.executable, "-m", "engine", "status", "--db", any_db], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == LedgerTooNew.exit_code == 2
    assert done.stderr.strip().count("\n") == 0 and "schema version 99" in done.stderr
