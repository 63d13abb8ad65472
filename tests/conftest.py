"""Shared fixtures: a real mock billing API on 127.0.0.1, input files, a CLI runner, and engine processes."""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.mock.process import MockProcess


@pytest.fixture
def api():
    """A fresh mock billing API in its own process, answering at once."""
    with MockProcess() as server:
        yield server


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "ledger.db")


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request, tmp_path):
    """A ledger of each kind in turn: the fault tests hold on a SQLite file and on PostgreSQL alike."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("postgres_url")


#: The local PostgreSQL server the tests create their own database on (trust auth, as on CI);
#: ``ENGINE_TEST_PG_URL`` (or the older ``ENGINE_TEST_POSTGRES``) names another.
POSTGRES_ADMIN = (
    os.environ.get("ENGINE_TEST_PG_URL")
    or os.environ.get("ENGINE_TEST_POSTGRES")
    or "postgresql://postgres@127.0.0.1:5432/postgres"
)
#: The local Redis whose numbered databases the cluster tests claim (``ENGINE_TEST_REDIS_URL`` names
#: another; a database number at its end is dropped: each test claims its own).
REDIS_SERVER = re.sub(r"/\d*$", "", os.environ.get("ENGINE_TEST_REDIS_URL") or "redis://127.0.0.1:6379")


@pytest.fixture
def broker():
    """A Redis database of this test's own: claimed in db 0 (so concurrent test sessions never share
    one), flushed before and after."""
    import redis

    claims = redis.Redis.from_url(f"{REDIS_SERVER}/0")
    try:
        claims.ping()
    except redis.ConnectionError as err:
        pytest.skip(f"no Redis at {REDIS_SERVER} (.ci/run starts one): {err}")
    token = f"{os.getpid()}:{time.time()}"
    number = next((n for n in range(1, 16) if claims.set(f"batch-engine-test:db:{n}", token, nx=True, ex=900)), None)
    if number is None:
        pytest.fail("all 15 Redis test databases are claimed by other test sessions")
    client = redis.Redis.from_url(f"{REDIS_SERVER}/{number}")
    client.flushdb()
    yield f"{REDIS_SERVER}/{number}"
    client.flushdb()
    claims.delete(f"batch-engine-test:db:{number}")


@pytest.fixture(scope="session")
def postgres_db():
    """A database of this test session's own on the local server, dropped at the end."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        pytest.skip(f"no PostgreSQL at {POSTGRES_ADMIN} (.ci/run starts one): {err}")
    name = f"engine_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    yield POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def postgres_url(postgres_db):
    """A ledger URL whose connections see an empty schema of this test's own."""
    import psycopg

    schema = "t_" + secrets.token_hex(4)
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{postgres_db}?options=-csearch_path%3D{schema}"


def write_csv(path, count: int, start: int = 1, extra: dict | None = None):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        columns = ["id", "amount", *(extra or {})]
        writer.writerow(columns)
        for n in range(start, start + count):
            writer.writerow([f"cus_{n}", n % 100 + 1, *((extra or {}).values())])
    return str(path)


@pytest.fixture
def customers(tmp_path):
    """``customers(n)`` writes a CSV of n customers and returns its path."""
    return lambda count, name="customers.csv", **kw: write_csv(tmp_path / name, count, **kw)


@pytest.fixture
def run():
    """Invoke the CLI in-process; returns click's Result."""
    runner = CliRunner()

    def invoke(*args, env=None, input=None):
        return runner.invoke(cli, [str(a) for a in args], env=env, input=input, catch_exceptions=True)

    return invoke


def ledger_rows(db: str, sql: str, *params):
    """Rows of ``sql`` (``?`` placeholders) read straight from a SQLite file or a PostgreSQL URL."""
    if db.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(db) as conn:
            return [tuple(row) for row in conn.execute(sql.replace("?", "%s"), params).fetchall()]
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def status_counts(db: str, run_id: str) -> dict:
    return dict(ledger_rows(db, "SELECT status, count(*) FROM requests WHERE run_id = ? GROUP BY status", run_id))


def report_json(run, db: str, run_id: str) -> dict:
    result = run("report", run_id, "--db", db, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


ENGINE = [sys.executable, "-m", "engine"]


@pytest.fixture
def start_engine():
    """Start ``python -m engine ...`` in the background; whatever is left is killed after the test."""
    started = []

    def start(*args, new_session: bool = False) -> subprocess.Popen:
        process = subprocess.Popen(
            [*ENGINE, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            for pid in worker_pids(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait()


def run_engine(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([*ENGINE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _proc_read(path: Path) -> bytes:
    """A /proc file's bytes, or nothing if its process or thread has just exited."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def children(pid: int) -> list[int]:
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        found += [int(c) for c in _proc_read(task / "children").split()]
    return found


def worker_pids(pid: int) -> list[int]:
    return [c for c in children(pid) if b"spawn_main" in _proc_read(Path(f"/proc/{c}/cmdline"))]


def wait_for_attempts(db: str, count: int, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if ledger_rows(db, "SELECT count(*) FROM attempts")[0][0] >= count:
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} attempts after {limit} s")


def wait_for_charges(api: MockProcess, count: int, limit: float = 60) -> None:
    """Until the mock API has charged ``count`` customers (a ledger-independent progress signal)."""
    deadline = time.monotonic() + limit
    while api.stats()["charges"] < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} charges after {limit} s")
        time.sleep(0.05)


def finish_with_reruns(db: str, run_id: str, passes: int = 2) -> None:
    for _ in range(passes):
        if status_counts(db, run_id).get("succeeded", 0) == sum(status_counts(db, run_id).values()):
            return
        run_engine("rerun", run_id, "--db", db, "--quiet")


def assert_everyone_charged_once(api: MockProcess, db: str, run_id: str, rows: int) -> None:
    assert status_counts(db, run_id) == {"succeeded": rows}
    stats = api.stats()
    assert stats["customers_charged"] == rows
    assert stats["customers_charged_more_than_once"] == 0, stats["double_charged_sample"]


def wait_gone(pids: list[int], limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and b"spawn_main" in _cmdline(pid):
            if time.monotonic() > deadline:
                pytest.fail(f"worker {pid} outlived its coordinator")
            time.sleep(0.05)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
