"""Shared fixtures: a real mock billing API on 127.0.0.1, input files, a CLI runner, and engine processes."""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.ledger import open_store
from engine.mock.process import MockProcess


def pytest_configure(config):
    """Compile the engine's modules once, before any test starts a process.

    The suite starts hundreds of Python processes of each kind (engines, workers, mocks, nodes). Where
    PYTHONDONTWRITEBYTECODE is set (some CI images and sandboxes do), none of them writes its
    bytecode, so each compiled every module it imported from source again: about 0.1 s of CPU a
    process. Cached bytecode is still read under that variable, so writing it once here is enough.
    """
    if not hasattr(config, "workerinput"):  # the controller, before the xdist workers start
        import compileall

        for folder in ("engine", "bench", "scripts"):
            compileall.compile_dir(str(Path(__file__).parent.parent / folder), quiet=1)


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


#: The Redis databases the tests take turns on, one a test at a time (database 0 holds the claims)
REDIS_TEST_DATABASES = range(1, 16)
#: The claims' key prefix in database 0, and the key that marks a database as a test's own
REDIS_CLAIM = "batch-engine-test:db:"
REDIS_MARK = "batch-engine-test:mark"
#: Seconds a claim lasts unrenewed: longer than any test may run (``timeout`` in setup.cfg), so that the
#: claims of a killed session lapse by themselves
REDIS_CLAIM_SECONDS = 900
#: Seconds a test waits for a database while all are claimed (by other xdist workers or sessions)
REDIS_CLAIM_WAIT = 120


@pytest.fixture
def broker():
    """A Redis database of this test's own, on the server ``ENGINE_TEST_REDIS_URL`` names.

    It is claimed in database 0 with ``SET NX EX`` (so xdist workers and concurrent sessions never share
    one, and a killed session's claims lapse), and taken only if it is empty or holds the mark a test
    left there: a database with keys and no mark is someone's own, and is passed over, never flushed.
    Flushed before (what a killed test left) and after, and then released, only while the claim is ours.
    """
    import redis

    claims = redis.Redis.from_url(f"{REDIS_SERVER}/0")
    try:
        claims.ping()
    except redis.ConnectionError as err:
        pytest.skip(f"no Redis at {REDIS_SERVER} (.ci/run starts one): {err}")
    token = f"{os.getpid()}:{secrets.token_hex(4)}"
    client = _claim_redis_database(claims, token)
    number = client.connection_pool.connection_kwargs["db"]
    yield f"{REDIS_SERVER}/{number}"
    if claims.get(f"{REDIS_CLAIM}{number}") == token.encode():
        client.flushdb()
        claims.delete(f"{REDIS_CLAIM}{number}")


def _claim_redis_database(claims, token: str):
    """A client of the first free test database, claimed, marked and emptied; waits while all are taken."""
    import redis

    deadline = time.monotonic() + REDIS_CLAIM_WAIT
    while time.monotonic() < deadline:
        for number in REDIS_TEST_DATABASES:
            if not claims.set(f"{REDIS_CLAIM}{number}", token, nx=True, ex=REDIS_CLAIM_SECONDS):
                continue
            client = redis.Redis.from_url(f"{REDIS_SERVER}/{number}")
            if client.dbsize() == 0 or client.exists(REDIS_MARK):
                client.flushdb()
                client.set(REDIS_MARK, token)
                return client
            claims.delete(f"{REDIS_CLAIM}{number}")  # someone's own database: not ours to use
        time.sleep(1)
    pytest.fail(f"every Redis test database ({REDIS_CLAIM}*) was claimed for {REDIS_CLAIM_WAIT} s")


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


def copy_ledger(template: str, folder: Path) -> str:
    """A copy of the SQLite ledger file ``template`` in ``folder``: a test of its own on a ledger that a
    module-scoped fixture filled once (the engine that filled it has exited, so the file is whole)."""
    copy = folder / "ledger.db"
    for suffix in ("", "-wal"):
        if os.path.exists(template + suffix):
            shutil.copyfile(template + suffix, str(copy) + suffix)
    return str(copy)


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
    """Rows of ``sql`` (``?`` placeholders) read through the store of a SQLite file or a PostgreSQL URL."""
    with open_store(db, create=False) as store:
        return _query(store, sql, params)


def _query(store, sql: str, params: tuple = ()) -> list[tuple]:
    """``sql`` on the store's own connection, its ``?`` placeholders written the store's way."""
    return [tuple(row) for row in store.conn.execute(sql.replace("?", store.PARAM), params).fetchall()]


def status_counts(db: str, run_id: str) -> dict:
    """Rows per state of the run, the states it has none in left out."""
    with open_store(db, create=False) as store:
        return {state: count for state, count in store.counts(run_id).items() if count}


def report_json(run, db: str, run_id: str) -> dict:
    result = run("report", run_id, "--db", db, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


ENGINE = [sys.executable, "-m", "engine"]


@pytest.fixture
def start_engine():
    """Start ``python -m engine ...`` in the background; whatever is left is killed after the test."""
    started = []

    def start(*args, new_session: bool = False, stdin=None) -> subprocess.Popen:
        process = subprocess.Popen(
            [*ENGINE, *map(str, args)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.stdin is not None:
            process.stdin.close()
        if process.poll() is None:
            for pid in worker_pids(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait()


def run_engine(*args, timeout=240, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([*ENGINE, *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=stdin)


def start_loading(start_engine, path: str, first: int, *args) -> subprocess.Popen:
    """``python -m engine ARGS`` (a ``bill -``) started with the header and the first ``first`` rows of the
    CSV ``path`` on its standard input, which stays open: its load goes on, for as long as a test needs,
    until the rest (``engine.rest``) is written and the pipe closed (``engine.communicate(engine.rest)``)."""
    engine = start_engine(*args, stdin=subprocess.PIPE)
    with open(path) as handle:
        lines = handle.readlines()
    assert len(lines) > first + 1
    engine.stdin.write("".join(lines[: first + 1]))
    engine.stdin.flush()
    engine.rest = "".join(lines[first + 1 :])
    return engine


def bill_args(csv_path: str, api: MockProcess, db: str, run_id: str, *options, broker: str | None = None) -> tuple:
    """``bill`` of ``csv_path`` to the mock API into ``db`` as ``run_id`` (through ``broker``'s nodes if
    given), then ``options``."""
    through = ("--broker", broker) if broker else ()
    return ("bill", csv_path, "--url", api.charge_url(), "--db", db, "--run-id", run_id, *through, *options)


#: Two worker processes, then ``--concurrency`` (the number that follows): the fault tests' senders
SENDERS = ("--workers", 2, "--concurrency")
#: Seconds between two signals of one stop: a second Ctrl-C comes after the first has been taken in.
SIGNAL_GAP = 0.3
#: Seconds a signalled pass may take to end (a drain finishes what is in flight).
STOP_LIMIT = 60


@dataclass(frozen=True)
class Stopped:
    """How a pass that a test signalled ended."""

    returncode: int
    stderr: str
    #: from the last signal until the coordinator had exited and its workers were gone
    seconds: float


def kill_then_rerun(
    engine: subprocess.Popen,
    db: str,
    run_id: str,
    *signals: int,
    group: bool = False,
    meanwhile: Callable[[], object] = lambda: None,
    rerun: tuple = (),
    rerun_exit: int = 0,
) -> Stopped:
    """Stop a pass under way as a crash, the OOM killer, systemd or an operator would, then rerun it: the
    scenario every fault test shares. ``signals`` (SIGKILL if none) go in turn to the coordinator, or to
    its whole process group if ``group`` (start it with ``new_session=True``); no worker may outlive the
    stop. ``meanwhile`` runs between the stop and the rerun (checks of what the stop left, or the mock API
    made quick again); the rerun, with ``rerun`` options, must exit ``rerun_exit``."""
    workers = worker_pids(engine.pid)
    for number, sent in enumerate(signals or (signal.SIGKILL,)):
        if number:
            time.sleep(SIGNAL_GAP)
        if group:
            os.killpg(engine.pid, sent)
        else:
            engine.send_signal(sent)
    signalled = time.monotonic()
    _, err = engine.communicate(timeout=STOP_LIMIT)
    wait_gone(workers)
    stopped = Stopped(engine.returncode, err, time.monotonic() - signalled)
    meanwhile()
    result = run_engine("rerun", run_id, "--db", db, "--quiet", *rerun)
    assert result.returncode == rerun_exit, result.stderr
    return stopped


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


def kill_a_worker_and_finish(engine: subprocess.Popen, meanwhile: Callable[[], object] = lambda: None) -> None:
    """kill -9 one of a pass's worker processes; the pass must replace it and still end well (exit 0).
    ``meanwhile`` runs while it does (the mock API made quick again, say)."""
    os.kill(worker_pids(engine.pid)[0], signal.SIGKILL)
    meanwhile()
    _, err = engine.communicate(timeout=120)
    assert engine.returncode == 0, err


def wait_for_attempts(api: MockProcess, db: str, count: int, limit: float = 60) -> None:
    """Until the ledger holds ``count`` attempts. It is read only once the mock API has seen a request: the
    engine has made its ledger by then, and opening a store (which creates what is missing) could race
    the engine's own creation of a new SQLite file."""
    deadline = time.monotonic() + limit
    while api.stats()["requests"] == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"no request reached the mock API after {limit} s")
        time.sleep(0.05)
    with open_store(db, create=False) as store:
        while _query(store, "SELECT count(*) FROM attempts")[0][0] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} attempts after {limit} s")
            time.sleep(0.05)


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
