"""Worker nodes over a real Redis broker and a real PostgreSQL ledger, as separate processes.

Each node is ``python -m engine worker``; the coordinator is ``python -m engine bill --broker``.
The mock API counts what reaches it, so a charge sent twice would show.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import time

import psycopg
import pytest
import redis
from conftest import ENGINE, POSTGRES_ADMIN, bill_args, kill_then_rerun, ledger_rows, run_engine, wait_for_charges

from engine.ledger import open_store
from engine.mock.process import MockProcess


@pytest.fixture
def nodes(broker, postgres_url):
    """``nodes(n)`` starts n worker nodes; every one left is killed after the test."""
    started: list[subprocess.Popen] = []
    open_store(postgres_url).close()  # the tables exist before any node looks

    def start(
        count: int, *extra, broker: str = broker, db: str = postgres_url, env: dict | None = None, log=None
    ) -> list[subprocess.Popen]:
        consuming = consumers(broker)
        for _ in range(count):
            started.append(
                subprocess.Popen(
                    [
                        *ENGINE,
                        "worker",
                        "--broker",
                        broker,
                        "--db",
                        db,
                        "--chunks-in-flight",
                        "4",
                        *map(str, extra),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log or subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,  # a node is its own process tree, as on its own machine
                )
            )
        wait_consuming(broker, consuming + count, started[-count:])
        return started[-count:]

    yield start
    for process in started:
        kill_tree(process)


def consumers(broker: str) -> int:
    """How many connections to ``broker`` (its database) wait on a queue: a node's Celery worker, once its
    pool has started, blocks in BRPOP on one."""
    client = redis.Redis.from_url(broker)
    number = client.connection_pool.connection_kwargs.get("db", 0)
    try:
        return sum(1 for c in client.client_list() if str(c.get("db")) == str(number) and c.get("cmd") == "brpop")
    finally:
        client.close()


def wait_consuming(broker: str, count: int, nodes: list[subprocess.Popen], limit: float = 60) -> None:
    """Until ``count`` nodes consume from ``broker``'s queue (not a fixed sleep: a busy machine starts them
    late, an idle one early)."""
    deadline = time.monotonic() + limit
    while consumers(broker) < count:
        assert all(node.poll() is None for node in nodes), "a worker node exited while starting"
        assert time.monotonic() < deadline, f"fewer than {count} worker nodes consuming after {limit} s"
        time.sleep(0.1)


class OwnRedis:
    """A Redis server of this test's own (no persistence, like a cache that restarts empty), to stop
    and start again mid-run."""

    def __init__(self, directory):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server (.ci/run installs the Debian package redis-server)")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def kill_tree(node: subprocess.Popen) -> None:
    """kill -9 of a node's whole process group: the Celery worker and its pool processes."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    node.wait(10)


def charged_once(api: MockProcess, rows: int) -> bool:
    stats = api.stats()
    print("mock API:", {key: stats[key] for key in ("customers_charged", "customers_charged_more_than_once")})
    print("charged twice, a sample:", stats.get("double_charged_sample"))
    return stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0


def test_three_nodes_send_every_chunk_once_through_faults(customers, postgres_url, broker, nodes):
    rows = 6000
    nodes(3)
    with MockProcess(latency=0.02, p503=0.05, p500=0.05, p_drop_before=0.02, retry_after=0) as api:
        result = run_engine(
            *bill_args(customers(rows), api, postgres_url, "three", broker=broker),
            "--max-attempts",  # 0.12 ** 10: no row runs out of attempts against 12 % of faults
            10,
            "--quiet",
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        assert "6000 succeeded" in result.stdout
        assert charged_once(api, rows)
    with open_store(postgres_url) as ledger:
        assert ledger.chunk_counts("three", 1) == {"queued": 0, "running": 0, "done": 60, "dead": 0}
        nodes_used = {row[0] for row in ledger.conn.execute("SELECT DISTINCT split_part(node, ':', 2) FROM chunks")}
    assert len(nodes_used) == 3  # every node took chunks


def test_a_node_logs_one_line_per_chunk_it_claims_and_finishes(customers, postgres_url, broker, nodes, tmp_path):
    """Through Python logging, on the stderr the worker command chose (Celery redirects its own)."""
    with open(tmp_path / "node.log", "w") as log:
        nodes(1, log=log)
        with MockProcess() as api:
            result = run_engine(
                *bill_args(customers(300), api, postgres_url, "logged", broker=broker),
                "--chunks",
                100,
                "--quiet",
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
    lines = (tmp_path / "node.log").read_text().splitlines()
    for chunk in range(1, 4):
        said = [line for line in lines if line.startswith(f"batch-engine node: chunk {chunk} of run logged: ")]
        assert [line.split(": ")[2].split(",")[0] for line in said] == ["claimed", "done"], lines


def test_a_node_killed_mid_chunk_loses_nothing_and_charges_nobody_twice(
    customers, postgres_url, broker, nodes, start_engine
):
    first, _ = nodes(2, "--visibility-timeout", 20)
    # the whole node: its chunks in flight are neither recorded nor acked
    out = _kill_mid_run(customers, postgres_url, broker, start_engine, "k9", lambda: kill_tree(first))
    assert "sent again after a node went silent" in out


def test_a_pool_process_killed_mid_chunk_loses_nothing_and_charges_nobody_twice(
    customers, postgres_url, broker, nodes, start_engine
):
    nodes(1)
    # Celery starts another; the chunk goes back to the queue
    _kill_mid_run(
        customers, postgres_url, broker, start_engine, "child",
        lambda: os.kill(sending_process(postgres_url, "child"), signal.SIGKILL),
    )  # fmt: skip


def sending_process(db: str, run_id: str) -> int:
    """The pool process sending the run's most recently claimed chunk: the one with the most left to send
    (any pool process might be between chunks, and its death would lose nothing to resend)."""
    with open_store(db) as ledger:
        (node,) = ledger.conn.execute(
            "SELECT node FROM chunks WHERE run_id = %s AND state = 'running' ORDER BY heartbeat_at DESC LIMIT 1",
            (run_id,),
        ).fetchone()
    return int(node.rsplit(":", 1)[1])  # host:node pid:pool process pid


def _kill_mid_run(customers, postgres_url, broker, start_engine, run_id: str, kill) -> str:
    """Bill 2,000 rows through the nodes, ``kill()`` once 200 are charged; everyone is charged once, and
    the redelivery is in the ledger and the summary. The coordinator's output."""
    rows = 2000
    with MockProcess(latency=0.6, jitter=0.1, lock_keys=False) as api:  # a chunk is in flight ≥ 0.5 s
        coordinator = start_engine(
            *bill_args(customers(rows), api, postgres_url, run_id, broker=broker), "--timeout", 3, "--stall-timeout", 2,
            "--quiet",
        )  # fmt: skip
        wait_for_charges(api, 200)
        kill()
        out, err = coordinator.communicate(timeout=150)
        assert coordinator.returncode == 0, err
        assert charged_once(api, rows)
    with open_store(postgres_url) as ledger:
        assert ledger.counts(run_id)["succeeded"] == rows
        assert ledger.chunk_summary(run_id)["resent"] >= 1
    return out


def test_a_visibility_timeout_shorter_than_a_chunk_sends_nothing_twice(customers, postgres_url, broker, nodes):
    rows = 800
    nodes(2, "--visibility-timeout", 1)  # Redis gives every chunk to the other node again while it is sent
    with MockProcess(latency=1.0, jitter=0.5, lock_keys=False) as api:
        result = run_engine(
            *bill_args(customers(rows), api, postgres_url, "vis", broker=broker), "--concurrency", 25, timeout=150
        )
        assert result.returncode == 0, result.stderr
        assert charged_once(api, rows)
    assert "duplicate deliveries refused" in result.stdout
    with open_store(postgres_url) as ledger:
        assert ledger.chunk_summary("vis")["refused"] >= 1  # the redeliveries happened, and were refused


def test_the_coordinator_killed_then_rerun_waits_for_what_nodes_still_send(
    customers, postgres_url, broker, nodes, start_engine
):
    rows = 2000
    nodes(2)
    with MockProcess(latency=0.3, jitter=0.1, lock_keys=False) as api:
        coordinator = start_engine(*bill_args(customers(rows), api, postgres_url, "boss", broker=broker), "--quiet")
        wait_for_charges(api, 300)
        # its chunks stay queued in Redis and in flight on the nodes
        kill_then_rerun(coordinator, postgres_url, "boss", rerun=("--broker", broker))
        assert charged_once(api, rows)
    with open_store(postgres_url) as ledger:
        assert ledger.counts("boss")["succeeded"] == rows


def test_a_broker_run_needs_a_shared_ledger_and_keys(customers, broker, db):
    result = run_engine("bill", customers(3), "--url", "http://127.0.0.1:9/{id}", "--db", db, "--broker", broker)
    assert result.returncode == 2 and "--broker needs a ledger every node can reach" in result.stderr
    typed = run_engine(
        "bill", customers(3), "--url", "http://127.0.0.1:9/{id}", "--broker", "redis://:hunter2@127.0.0.1:6379/0"
    )
    assert typed.returncode == 2 and "ENGINE_BROKER" in typed.stderr and "hunter2" not in typed.stderr


def test_rate_holds_for_all_nodes_together(customers, postgres_url, broker, nodes):
    rows, rate = 1200, 200
    nodes(3)
    with MockProcess() as api:
        started = time.monotonic()
        result = run_engine(
            *bill_args(customers(rows), api, postgres_url, "paced", broker=broker),
            "--rate",
            rate,
            "--quiet",
            timeout=120,
        )
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        stats = api.stats()
    assert stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0
    # three nodes, 12 chunks in flight, one schedule: never more than the rate in any second, as the nodes
    # started them (the server's own count also holds the machine's scheduling delays, which bunch arrivals)
    starts = [at for (at,) in ledger_rows(postgres_url, "SELECT started_at FROM attempts ORDER BY started_at")]
    assert busiest_second(starts) <= rate * 1.05, busiest_second(starts)
    assert took >= rows / rate - 1.5


def busiest_second(times: list[float]) -> int:
    """The most of the sorted ``times`` that fall within one second."""
    busiest, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= 1.0:
            first += 1
        busiest = max(busiest, last - first + 1)
    return busiest


def test_an_outage_pauses_every_node_and_one_probe_resumes_them(customers, postgres_url, broker, nodes, start_engine):
    rows = 3000  # most of them still to send when the outage ends
    nodes(2)
    with MockProcess(latency=0.2, retry_after=0) as api:
        coordinator = start_engine(*bill_args(customers(rows), api, postgres_url, "outage", broker=broker), "--quiet")
        wait_for_charges(api, 300)  # the endpoint was seen up: an outage now is one, not a wrong address
        api.configure(p503=1.0)
        time.sleep(5)
        api.configure(p503=0.0)
        _, err = coordinator.communicate(timeout=120)
        stats = api.stats()
    assert coordinator.returncode == 0, err
    assert stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0
    # what was in flight when the outage began answers 503 once, then a probe now and then; without
    # the shared pause, every row in flight would retry through the outage (thousands of 503s)
    assert 0 < stats["http_status"].get("503", 0) < 1200, stats["http_status"]


def test_sigterm_on_a_node_finishes_and_records_its_chunks_then_another_node_goes_on(
    customers, postgres_url, broker, nodes, start_engine
):
    rows = 1500
    (first,) = nodes(1)
    with MockProcess(latency=0.3, jitter=0.1, lock_keys=False) as api:
        coordinator = start_engine(
            *bill_args(customers(rows), api, postgres_url, "term", broker=broker),
            "--quiet",
        )
        wait_for_charges(api, 200)
        first.send_signal(signal.SIGTERM)  # what systemctl stop sends: Celery's warm shutdown
        assert first.wait(60) == 0
        with open_store(postgres_url) as ledger:
            assert ledger.chunk_counts("term", 1)["running"] == 0  # what it held was finished and recorded
        nodes(1)
        out, err = coordinator.communicate(timeout=120)
        assert coordinator.returncode == 0, err
        assert charged_once(api, rows)


def test_ctrl_c_stops_every_node_records_what_was_in_flight_and_rerun_finishes(
    customers, postgres_url, broker, nodes, start_engine
):
    rows = 1500  # at the stop (300 charged), most are left for the rerun
    nodes(1)
    with MockProcess(latency=0.3, jitter=0.1, lock_keys=False) as api:
        coordinator = start_engine(
            *bill_args(customers(rows), api, postgres_url, "int", broker=broker),
            "--concurrency",
            20,
            "--quiet",
        )
        wait_for_charges(api, 300)

        def stopped_everywhere() -> None:
            with open_store(postgres_url) as ledger:
                assert ledger.chunk_counts("int", 1)["running"] == 0  # the node stopped and recorded, nothing half-done
                left = ledger.counts("int")["pending"]
            assert 0 < left < rows - 300
            charged_at_stop = api.stats()["charges"]
            time.sleep(1.5)
            assert api.stats()["charges"] == charged_at_stop  # nothing is sent after the stop

        stopped = kill_then_rerun(
            coordinator, postgres_url, "int", signal.SIGINT, meanwhile=stopped_everywhere, rerun=("--broker", broker)
        )
        assert stopped.returncode == 130, stopped.stderr
        assert charged_once(api, rows)


def test_an_outage_longer_than_max_pause_ends_a_pass_on_nodes(customers, postgres_url, broker, nodes, start_engine):
    nodes(1)
    with MockProcess(latency=0.2) as api:
        coordinator = start_engine(
            *bill_args(customers(4000), api, postgres_url, "down", broker=broker), "--max-pause", 2, "--quiet"
        )
        wait_for_charges(api, 200)
        api.configure(p503=1.0)  # down, and it stays down
        started = time.monotonic()
        _, err = coordinator.communicate(timeout=90)
    assert coordinator.returncode == 1, err
    assert "stayed down" in err and "rerun down" in err
    assert time.monotonic() - started < 45


def test_redis_restarted_empty_mid_run_the_run_completes_and_charges_nobody_twice(
    customers, postgres_url, own_redis, nodes, start_engine
):
    rows = 3000
    nodes(2, broker=own_redis.url)
    with MockProcess(latency=0.3, jitter=0.1, lock_keys=False) as api:
        coordinator = start_engine(
            *bill_args(customers(rows), api, postgres_url, "redis", broker=own_redis.url), "--quiet"
        )
        wait_for_charges(api, 300)
        own_redis.kill()  # every queued chunk id, the rate schedule and the breaker are gone
        time.sleep(3)
        own_redis.start()
        out, err = coordinator.communicate(timeout=180)
        assert coordinator.returncode == 0, err
        assert charged_once(api, rows)
    with open_store(postgres_url) as ledger:
        assert ledger.counts("redis")["succeeded"] == rows


def test_postgresql_restarted_mid_run_the_run_completes_and_charges_nobody_twice(
    customers, postgres_db, postgres_url, broker, nodes, start_engine
):
    import psycopg

    rows = 3000
    nodes(2)
    database = postgres_db.rsplit("/", 1)[1]
    with MockProcess(latency=0.3, jitter=0.1, lock_keys=False) as api:
        coordinator = start_engine(*bill_args(customers(rows), api, postgres_url, "pg", broker=broker), "--quiet")
        wait_for_charges(api, 300)
        # what a restart does to every client: connections cut, new ones refused, then accepted again
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            time.sleep(4)
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        out, err = coordinator.communicate(timeout=180)
        assert coordinator.returncode == 0, err
        assert charged_once(api, rows)
    with open_store(postgres_url) as ledger:
        assert ledger.counts("pg")["succeeded"] == rows


def held_chunks(db: str, run_id: str) -> dict[int, int]:
    """The run's running chunks, each with the pid of the node (Celery main process) holding it."""
    with open_store(db) as ledger:
        sql = "SELECT chunk_id, node FROM chunks WHERE run_id = %s AND state = 'running'"
        held = ledger.conn.execute(sql, (run_id,))
        return {chunk: int(node.split(":")[1]) for (chunk, node) in held.fetchall()}


@contextlib.contextmanager
def frozen_in_a_transaction(db: str, chunk_id: int):
    """A node's ledger session frozen between two statements of a transaction (renewing its claim): it holds
    ``chunk_id``'s row until the server ends the session, which it must, or that chunk could never be taken over."""
    ledger = open_store(db)
    try:
        ledger.conn.execute("BEGIN")
        ledger.conn.execute("UPDATE chunks SET heartbeat_at = heartbeat_at WHERE chunk_id = %s", (chunk_id,))
        yield
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):  # the server ended it
            ledger.conn.execute("SELECT 1")
    finally:
        ledger.close()


def wait_queued_again(db: str, chunks: set[int], frozen: int, coordinator: subprocess.Popen, limit: float = 90) -> None:
    """Until one of ``chunks``, which node ``frozen`` held, is no longer its: the coordinator found it silent
    and queued it again for another node."""
    deadline = time.monotonic() + limit
    while True:
        assert coordinator.poll() is None, coordinator.communicate()[1]
        with open_store(db) as ledger:
            states = ledger.conn.execute(
                "SELECT chunk_id, state, node FROM chunks WHERE chunk_id = ANY(%s)", (list(chunks),)
            ).fetchall()
        if any(state != "running" or int(node.split(":")[1]) != frozen for (_, state, node) in states):
            return
        assert time.monotonic() < deadline, f"the frozen node's chunks were never queued again: {states}"
        time.sleep(0.2)


def test_a_node_frozen_past_its_lease_sends_nothing_another_node_now_owns(
    customers, postgres_url, broker, nodes, start_engine
):
    """Issue 21.1: SIGSTOP one node's process group until one of its chunks is queued again for the other
    node (its silence outlasted lease + timeout + margin, 4 + 4 + 1 s), then SIGCONT."""
    rows = 400  # 8 chunks: the frozen node holds some, the other node sends its own, then those
    started = nodes(2)
    with MockProcess(latency=1.0, lock_keys=False) as api:  # no lock on keys in progress: a resend charges
        coordinator = start_engine(
            *bill_args(customers(rows), api, postgres_url, "frozen", broker=broker),
            "--concurrency", 4, "--timeout", 4, "--stall-timeout", 4, "--chunks", 50, "--quiet",
        )  # fmt: skip
        wait_for_charges(api, 40)
        held = held_chunks(postgres_url, "frozen")
        frozen = next(node for node in started if node.pid in held.values())
        os.killpg(frozen.pid, signal.SIGSTOP)  # the whole node: a VM pause, a container freeze
        locked = min(chunk for chunk, pid in held.items() if pid == frozen.pid)
        with frozen_in_a_transaction(postgres_url, locked):
            wait_queued_again(postgres_url, {locked}, frozen.pid, coordinator)
        os.killpg(frozen.pid, signal.SIGCONT)
        out, err = coordinator.communicate(timeout=120)
        assert coordinator.returncode in (0, 1), err
        if coordinator.returncode:
            rerun = run_engine("rerun", "frozen", "--db", postgres_url, "--broker", broker, "--quiet", timeout=120)
            assert rerun.returncode == 0, rerun.stderr
        stats = api.stats()
    assert stats["customers_charged_more_than_once"] == 0, attempts_of(postgres_url, stats["double_charged_sample"])
    assert stats["customers_charged"] == rows
    with open_store(postgres_url) as ledger:
        assert ledger.counts("frozen")["succeeded"] == rows
        assert ledger.chunk_summary("frozen")["resent"] >= 1
        (superseded,) = ledger.conn.execute("SELECT count(*) FROM attempts WHERE outcome = 'superseded'").fetchone()
    assert superseded >= 1  # what the frozen node had in flight came back, and was not taken as the outcome


def attempts_of(db: str, row_ids: list[str]) -> list[tuple]:
    """Every recorded attempt of these rows, in time order: what a failure shows of a row charged twice."""
    with open_store(db) as ledger:
        return ledger.conn.execute(
            "SELECT r.row_id, r.chunk_id, a.attempt, a.outcome, a.started_at, a.duration_ms, a.error FROM attempts a"
            " JOIN requests r ON r.rid = a.rid WHERE r.row_id = ANY(%s) ORDER BY a.started_at",
            (row_ids,),
        ).fetchall()


def without(name: str) -> dict:
    """This process's environment without ``name``: a node that lacks a secret the run's headers need."""
    return {key: value for key, value in os.environ.items() if key != name}


def lines_until(process: subprocess.Popen, text: str, limit: float) -> tuple[str, float]:
    """The coordinator's stderr up to the first line holding ``text``, and how long that took (s)."""
    started, seen = time.monotonic(), ""
    assert process.stderr is not None
    while text not in seen:
        assert time.monotonic() - started < limit, f"no {text!r} within {limit} s: {seen}"
        if select.select([process.stderr], [], [], 0.5)[0]:
            line = process.stderr.readline()
            assert line or process.poll() is None, seen
            seen += line
    return seen, time.monotonic() - started


SECRET_HEADER = ("--header", "Authorization: Bearer ${API_TOKEN}")


def test_a_node_lacking_a_variable_is_named_at_once_and_the_others_send_its_chunks(
    customers, postgres_url, broker, nodes, start_engine, monkeypatch, tmp_path
):
    """Issue 21.6: the run completes on the node that can; the one that cannot is named within seconds."""
    rows = 400
    monkeypatch.setenv("API_TOKEN", "sk_test_fine")
    with open(tmp_path / "bad.log", "w") as log:
        (bad,) = nodes(1, env=without("API_TOKEN"), log=log)
    nodes(1)
    with MockProcess(latency=0.2, lock_keys=False) as api:
        coordinator = start_engine(
            *bill_args(customers(rows), api, postgres_url, "env", broker=broker),
            *SECRET_HEADER,
            "--chunks",
            50,
            "--quiet",
        )
        said, after = lines_until(coordinator, "refuses", limit=15)
        assert f":{bad.pid} refuses" in said and "API_TOKEN" in said and "sk_test_fine" not in said
        _, err = coordinator.communicate(timeout=120)
        assert coordinator.returncode == 0, said + err
        assert charged_once(api, rows)
    log = (tmp_path / "bad.log").read_text()
    assert "API_TOKEN" in log and "Traceback" not in log, log
    with open_store(postgres_url) as ledger:
        assert ledger.chunk_summary("env")["dead"] == 0  # a refusal spends no delivery


def test_when_no_node_can_send_the_run_stops_at_once_with_the_reason(
    customers, postgres_url, broker, nodes, start_engine, monkeypatch
):
    monkeypatch.setenv("API_TOKEN", "sk_test_fine")
    nodes(2, env=without("API_TOKEN"))
    with MockProcess(lock_keys=False) as api:
        started = time.monotonic()
        result = run_engine(
            *bill_args(customers(200), api, postgres_url, "none", broker=broker), *SECRET_HEADER, "--quiet"
        )
        took = time.monotonic() - started
        assert api.stats()["requests"] == 0
    assert result.returncode == 1, result.stderr
    assert "no live node can send" in result.stderr and "API_TOKEN" in result.stderr
    assert took < 30, took


def test_a_node_on_another_ledger_is_named_and_claims_nothing_there(
    customers, postgres_url, postgres_db, broker, nodes, start_engine
):
    other = f"{postgres_db}?options=-csearch_path%3Dother_{os.getpid()}"
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS other_{os.getpid()}")
    open_store(other).close()
    (stray,) = nodes(1, db=other)
    nodes(1)
    with MockProcess(latency=0.1, lock_keys=False) as api:
        coordinator = start_engine(*bill_args(customers(300), api, postgres_url, "led", broker=broker), "--quiet")
        said, _ = lines_until(coordinator, "refuses", limit=15)
        assert f":{stray.pid} refuses" in said and "another ledger" in said
        listed = run_engine("status", "--db", postgres_url, "--broker", broker, timeout=30).stdout
        assert "worker nodes: 2" in listed and f":{stray.pid}  batch-engine" in listed
        assert "ANOTHER ledger" in listed and "this ledger" in listed
        _, err = coordinator.communicate(timeout=120)
        assert coordinator.returncode == 0, said + err
        assert charged_once(api, 300)
