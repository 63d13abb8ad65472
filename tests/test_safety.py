"""Nobody is charged twice and no run is left hanging, even by mistakes and unkind servers.

Real engine processes, a real mock API on 127.0.0.1, real signals. The mock runs with
``lock_keys=False`` where it matters: like many real APIs it does not refuse a second
request whose Idempotency-Key is still being processed, it charges it too.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import zlib
from pathlib import Path

from conftest import (
    SENDERS,
    assert_everyone_charged_once,
    bill_args,
    kill_a_worker_and_finish,
    kill_then_rerun,
    ledger_rows,
    run_engine,
    status_counts,
    wait_for_attempts,
    worker_pids,
)

from engine.mock.process import MockProcess


def only_run_id(db: str) -> str:
    ((run_id,),) = ledger_rows(db, "SELECT run_id FROM runs")
    return run_id


def always_failing(rows: int, rate: float) -> set[str]:
    """The customers the mock's ``fail_rate`` always answers 503 (its own rule, by hash)."""
    return {f"cus_{n}" for n in range(1, rows + 1) if zlib.crc32(f"cus_{n}".encode()) % 10_000 < rate * 10_000}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_same_bill_twice_charges_nobody_twice(customers, db, tmp_path):
    rows = 300
    with MockProcess() as api:
        bill = ["bill", customers(rows), "--url", api.charge_url(), "--quiet"]
        first = run_engine(*bill, "--db", db)
        assert first.returncode == 0, first.stderr
        run_id = only_run_id(db)

        again = run_engine(*bill, "--db", db)
        assert again.returncode == 0, again.stderr  # nothing left to do
        assert "already billed" in again.stderr and run_id in again.stderr
        assert "Traceback" not in again.stderr
        assert ledger_rows(db, "SELECT count(*) FROM runs") == [(1,)]

        fresh = run_engine(*bill, "--db", tmp_path / "fresh.db")  # the ledger was lost or is elsewhere
        assert fresh.returncode == 0, fresh.stderr
        assert_everyone_charged_once(api, db, run_id, rows)
        assert api.stats()["replays"] == rows

        next_month = run_engine(*bill, "--db", db, "--run-id", "2026-12")  # billing again on purpose
        assert next_month.returncode == 0, next_month.stderr
        stats = api.stats()
    assert stats["charges"] == 2 * rows and stats["customers_charged_more_than_once"] == rows


def test_customers_that_always_fail_end_the_pass_quickly(customers, db):
    rows, rate = 300, 0.1
    with MockProcess(fail_rate=rate) as api:
        bill = ["bill", customers(rows), "--url", api.charge_url(), "--db", db, "--quiet"]
        started = time.monotonic()
        result = run_engine(*bill, timeout=120)
        elapsed = time.monotonic() - started
        assert result.returncode == 1, result.stderr
        # 5 attempts with back-off from 0.5 s doubling: under 8 s of waiting; the old breaker paused for 835 s
        assert elapsed < 30, elapsed
        run_id = only_run_id(db)
        failed = {row for (row,) in ledger_rows(db, "SELECT row_id FROM requests WHERE status = 'failed'")}
        assert failed == always_failing(rows, rate)
        assert status_counts(db, run_id) == {"succeeded": rows - len(failed), "failed": len(failed)}

        again = run_engine(*bill)
        assert again.returncode == 1  # rows are left: the second bill says so and sends nothing
        assert f"python -m engine rerun {run_id}" in again.stderr
        assert api.stats()["customers_charged_more_than_once"] == 0


def test_nothing_listening_fails_every_row_with_one_line(customers, db):
    url = f"http://127.0.0.1:{free_port()}/v1/customers/{{id}}/charges"
    off = ("--max-failure-rate", "off")  # the kill switch would stop this run early (tests/test_kill_switch.py)
    result = run_engine("bill", customers(200), "--url", url, "--db", db, "--quiet", *off, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "Could not connect" in result.stdout or "Could not connect" in result.stderr
    assert status_counts(db, only_run_id(db)) == {"failed": 200}


def test_a_bad_certificate_fails_every_row_at_once(customers, db, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-days",
            "1",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    # a backlog for all 50 connections at once, as a real server has (http.server's default is 5): with
    # handshakes done one at a time in accept, a busy machine overflowed it and one connection was reset
    server_class = type("Server", (http.server.ThreadingHTTPServer,), {"request_queue_size": 128})
    server = server_class(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/v1/customers/{{id}}/charges"
        result = run_engine("bill", customers(50), "--url", url, "--db", db, "--quiet", timeout=120)
    finally:
        server.shutdown()
    assert result.returncode == 1, result.stderr
    assert "certificate" in result.stdout and "Traceback" not in result.stderr
    assert status_counts(db, only_run_id(db)) == {"failed": 50}
    assert ledger_rows(db, "SELECT count(*) FROM attempts") == [(50,)]  # retrying cannot help: no retries


def test_a_killed_worker_is_not_resent_while_its_requests_may_run(customers, db, tmp_path, start_engine):
    rows = 2000
    log = tmp_path / "events.jsonl"
    with MockProcess(latency=1.0, jitter=0.5, lock_keys=False) as api:
        engine = start_engine(
            *bill_args(customers(rows), api, db, "kw", *SENDERS, 100, "--timeout", 3, "--log-file", log, "--quiet")
        )
        wait_for_attempts(api, db, 300)
        kill_a_worker_and_finish(engine)
        assert_everyone_charged_once(api, db, "kw", rows)
    assert '"event":"worker_died"' in log.read_text()


def test_a_killed_pass_rerun_at_once_waits_for_what_may_still_run(customers, db, start_engine):
    rows = 2000
    with MockProcess(latency=1.0, jitter=0.5, lock_keys=False) as api:
        engine = start_engine(
            *bill_args(customers(rows), api, db, "k9", *SENDERS, 100, "--timeout", 3, "--quiet"), new_session=True
        )
        wait_for_attempts(api, db, 300)
        kill_then_rerun(engine, db, "k9", group=True)  # coordinator and workers, as a crash or the OOM killer would
        assert_everyone_charged_once(api, db, "k9", rows)


def test_a_second_pass_of_a_running_run_is_refused(customers, db, start_engine):
    rows = 2000
    with MockProcess(latency=0.5, lock_keys=False) as api:
        engine = start_engine(*bill_args(customers(rows), api, db, "busy", *SENDERS, 50, "--quiet"))
        wait_for_attempts(api, db, 100)
        second = run_engine("rerun", "busy", "--db", db, "--quiet")
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert f"pid {engine.pid}" in second.stderr
        _, err = engine.communicate(timeout=120)
        assert engine.returncode == 0, err
        assert_everyone_charged_once(api, db, "busy", rows)


def test_sigterm_to_the_process_group_without_keys_charges_nobody_twice(customers, db, start_engine):
    rows = 2000
    with MockProcess(latency=0.5) as api:
        engine = start_engine(
            *bill_args(customers(rows), api, db, "term", "--no-idempotency", *SENDERS, 50, "--quiet"), new_session=True
        )
        wait_for_attempts(api, db, 200)
        stopped = kill_then_rerun(engine, db, "term", signal.SIGTERM, group=True)  # what `systemctl stop` does
        assert stopped.returncode != 0 and "Traceback" not in stopped.stderr
        assert_everyone_charged_once(api, db, "term", rows)


def test_a_crash_without_keys_leaves_in_flight_rows_unknown(customers, db, start_engine):
    rows = 2000
    with MockProcess(latency=0.5) as api:
        engine = start_engine(
            *bill_args(customers(rows), api, db, "crash", "--no-idempotency", *SENDERS, 50, "--timeout", 2, "--quiet"),
            new_session=True,
        )
        wait_for_attempts(api, db, 200)
        kill_then_rerun(engine, db, "crash", group=True, rerun_exit=1)  # unknown rows are left for a person
        counts = status_counts(db, "crash")
        assert counts.get("unknown", 0) > 0 and counts["succeeded"] + counts["unknown"] == rows, counts
        stats = api.stats()
        assert stats["customers_charged_more_than_once"] == 0, stats["double_charged_sample"]


def test_a_stopped_worker_is_replaced_and_the_pass_ends(customers, db, tmp_path, start_engine):
    rows = 2000
    log = tmp_path / "events.jsonl"
    with MockProcess(latency=0.2, lock_keys=False) as api:
        engine = start_engine(
            *bill_args(
                customers(rows),
                api,
                db,
                "stop",
                *SENDERS,
                50,
                "--timeout",
                3,
                "--stall-timeout",
                3,
                "--log-file",
                log,
                "--quiet",
            )
        )
        wait_for_attempts(api, db, 200)
        os.kill(worker_pids(engine.pid)[0], signal.SIGSTOP)  # alive, silent: a deadlock in a C library
        _, err = engine.communicate(timeout=90)
        assert engine.returncode == 0, err
        assert_everyone_charged_once(api, db, "stop", rows)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(event["event"] == "worker_stalled" for event in events)


def test_huge_answers_do_not_grow_a_worker(customers, db, start_engine):
    peak_kb = 0
    with MockProcess(body_bytes=20_000_000) as api:
        engine = start_engine(
            "bill", customers(60), "--url", api.charge_url(), "--db", db, "--workers", 1, "--concurrency", 20, "--quiet"
        )
        deadline = time.monotonic() + 120
        while engine.poll() is None and time.monotonic() < deadline:
            for pid in worker_pids(engine.pid):
                peak_kb = max(peak_kb, peak_rss_kb(pid))
            time.sleep(0.02)
        _, err = engine.communicate(timeout=30)
        assert engine.returncode == 0, err
        assert api.stats()["charges"] == 60
    assert 0 < peak_kb < 100_000, peak_kb  # 60 answers of 20 MB: buffered whole they took it past 400 MB
    (excerpt,) = {row for (row,) in ledger_rows(db, "SELECT length(excerpt) FROM attempts")}
    assert excerpt == 200


def peak_rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def test_a_429_storm_that_does_not_follow_the_load_does_not_sink_the_run(customers, db):
    rows = 5000
    with MockProcess(latency=0.05, p429=0.3, retry_after=1, seed=7) as api:
        started = time.monotonic()
        result = run_engine(
            "bill", customers(rows), "--url", api.charge_url(), "--db", db, "--run-id", "storm", "--quiet", timeout=120
        )
        elapsed = time.monotonic() - started
        assert result.returncode in (0, 1), result.stderr  # 0.3 ** 5 of the rows may use up their attempts
        assert elapsed < 60, elapsed  # the window shrank to nothing and stayed there: 8 rows/s, 10+ minutes
        assert status_counts(db, "storm").get("succeeded", 0) > rows * 0.99
        assert api.stats()["customers_charged_more_than_once"] == 0
    gaps = ledger_rows(
        db,
        "SELECT max(gap) FROM (SELECT started_at - lag(started_at) OVER "
        "(PARTITION BY rid ORDER BY attempt) AS gap FROM attempts)",
    )
    assert gaps[0][0] < 5, gaps  # no row rests much longer than the server's Retry-After
