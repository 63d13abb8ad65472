"""Worker nodes over a real Redis broker and a real PostgreSQL ledger, as separate processes.

Each node is ``python -m engine worker``; the coordinator is ``python -m engine bill --broker``.
The mock API counts what reaches it, so a charge sent twice would show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import redis
from conftest import ENGINE, run_engine, wait_for_charges

from engine.ledger import open_store
from engine.mock.process import MockProcess

REDIS = "redis://127.0.0.1:6379"


@pytest.fixture
def broker():
    """A Redis database of this test's own: claimed in db 0 (so concurrent test sessions never share
    one), flushed before and after."""
    claims = redis.Redis.from_url(f"{REDIS}/0")
    try:
        claims.ping()
    except redis.ConnectionError as err:
        pytest.skip(f"no Redis at {REDIS} (.ci/run starts one): {err}")
    token = f"{os.getpid()}:{time.time()}"
    number = next((n for n in range(1, 16) if claims.set(f"batch-engine-test:db:{n}", token, nx=True, ex=900)), None)
    if number is None:
        pytest.fail("all 15 Redis test databases are claimed by other test sessions")
    client = redis.Redis.from_url(f"{REDIS}/{number}")
    client.flushdb()
    yield f"{REDIS}/{number}"
    client.flushdb()
    claims.delete(f"batch-engine-test:db:{number}")


@pytest.fixture
def nodes(broker, postgres_url):
    """``nodes(n)`` starts n worker nodes; every one left is killed after the test."""
    started: list[subprocess.Popen] = []
    open_store(postgres_url).close()  # the tables exist before any node looks

    def start(count: int, *extra) -> list[subprocess.Popen]:
        for _ in range(count):
            started.append(
                subprocess.Popen(
                    [
                        *ENGINE,
                        "worker",
                        "--broker",
                        broker,
                        "--db",
                        postgres_url,
                        "--chunks-in-flight",
                        "4",
                        *map(str, extra),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(2.5)  # a node connects to Redis and starts consuming
        return started[-count:]

    yield start
    for process in started:
        process.kill()
        process.wait(10)


def bill_args(csv_path: str, api: MockProcess, db: str, broker: str, run_id: str) -> tuple:
    """``bill`` of ``csv_path`` to the mock API through the broker's nodes, into ``db``."""
    return ("bill", csv_path, "--url", api.charge_url(), "--db", db, "--broker", broker, "--run-id", run_id)


def charged_once(api: MockProcess, rows: int) -> bool:
    stats = api.stats()
    return stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0


def test_two_nodes_send_every_chunk_once(customers, postgres_url, broker, nodes):
    rows = 3000
    nodes(2)
    with MockProcess(latency=0.02, p503=0.1, retry_after=0) as api:
        result = run_engine(
            *bill_args(customers(rows), api, postgres_url, broker, "two"),
            "--max-attempts",  # 0.1 ** 10: no row runs out of attempts against 10 % of 503s
            10,
            "--quiet",
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "3000 succeeded" in result.stdout
        assert charged_once(api, rows)
    with open_store(postgres_url) as ledger:
        assert ledger.chunk_counts("two", 1) == {"queued": 0, "running": 0, "done": 30, "dead": 0}
        nodes_used = {row[0] for row in ledger.conn.execute("SELECT DISTINCT split_part(node, ':', 2) FROM chunks")}
    assert len(nodes_used) == 2  # both nodes took chunks


def test_a_node_killed_mid_chunk_loses_nothing_and_charges_nobody_twice(
    customers, postgres_url, broker, nodes, start_engine
):
    rows = 2000
    first, _ = nodes(2, "--visibility-timeout", 20)
    with MockProcess(latency=0.3, jitter=0.1, lock_keys=False) as api:
        coordinator = start_engine(
            *bill_args(customers(rows), api, postgres_url, broker, "k9"),
            "--timeout",
            3,
            "--stall-timeout",
            2,
            "--quiet",
        )
        wait_for_charges(api, 200)
        first.send_signal(signal.SIGKILL)  # the whole node: its chunks in flight are neither recorded nor acked
        out, err = coordinator.communicate(timeout=150)
        assert coordinator.returncode == 0, err
        assert charged_once(api, rows)
    with open_store(postgres_url) as ledger:
        assert ledger.counts("k9")["succeeded"] == rows


def test_a_broker_run_needs_a_shared_ledger_and_keys(customers, broker, db):
    result = run_engine("bill", customers(3), "--url", "http://127.0.0.1:9/{id}", "--db", db, "--broker", broker)
    assert result.returncode == 2 and "--broker needs a ledger every node can reach" in result.stderr
    typed = run_engine(
        "bill", customers(3), "--url", "http://127.0.0.1:9/{id}", "--broker", "redis://:hunter2@127.0.0.1:6379/0"
    )
    assert typed.returncode == 2 and "ENGINE_BROKER" in typed.stderr and "hunter2" not in typed.stderr


def test_rate_holds_for_all_nodes_together(customers, postgres_url, broker, nodes):
    rows, rate = 240, 40
    nodes(2)
    with MockProcess() as api:
        started = time.monotonic()
        result = run_engine(
            *bill_args(customers(rows), api, postgres_url, broker, "paced"),
            "--rate",
            rate,
            "--quiet",
            timeout=120,
        )
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        stats = api.stats()
    assert stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0
    # two nodes, 8 chunks in flight, one schedule: never more than the rate in any second at the server
    assert stats["max_requests_in_one_second"] <= rate * 1.1, stats["max_requests_in_one_second"]
    assert took >= rows / rate - 1.5


def test_an_outage_pauses_every_node_and_one_probe_resumes_them(customers, postgres_url, broker, nodes, start_engine):
    rows = 6000
    nodes(2)
    with MockProcess(latency=0.2, retry_after=0) as api:
        coordinator = start_engine(*bill_args(customers(rows), api, postgres_url, broker, "outage"), "--quiet")
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
            *bill_args(customers(rows), api, postgres_url, broker, "term"),
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
    rows = 3000
    nodes(1)
    with MockProcess(latency=0.3, jitter=0.1, lock_keys=False) as api:
        coordinator = start_engine(
            *bill_args(customers(rows), api, postgres_url, broker, "int"),
            "--concurrency",
            20,
            "--quiet",
        )
        wait_for_charges(api, 300)
        coordinator.send_signal(signal.SIGINT)
        _, err = coordinator.communicate(timeout=60)
        assert coordinator.returncode == 130, err
        with open_store(postgres_url) as ledger:
            assert ledger.chunk_counts("int", 1)["running"] == 0  # the node stopped and recorded, nothing half-done
            left = ledger.counts("int")["pending"]
        assert 0 < left < rows - 300
        charged_at_stop = api.stats()["charges"]
        time.sleep(1.5)
        assert api.stats()["charges"] == charged_at_stop  # nothing is sent after the stop
        result = run_engine("rerun", "int", "--db", postgres_url, "--broker", broker, "--quiet", timeout=120)
        assert result.returncode == 0, result.stderr
        assert charged_once(api, rows)


def test_an_outage_longer_than_max_pause_ends_a_pass_on_nodes(customers, postgres_url, broker, nodes, start_engine):
    nodes(1)
    with MockProcess(latency=0.2) as api:
        coordinator = start_engine(
            *bill_args(customers(4000), api, postgres_url, broker, "down"), "--max-pause", 2, "--quiet"
        )
        wait_for_charges(api, 200)
        api.configure(p503=1.0)  # down, and it stays down
        started = time.monotonic()
        _, err = coordinator.communicate(timeout=90)
    assert coordinator.returncode == 1, err
    assert "stayed down" in err and "rerun down" in err
    assert time.monotonic() - started < 45
