"""The PostgreSQL ledger end to end, on a real server on 127.0.0.1 and real engine processes.

The ledger contract itself runs against PostgreSQL in tests/test_ledger.py; here the
commands do: bill, kill -9 of every process, rerun, status, report and export.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal

from conftest import run_engine, wait_for_charges

from engine.ledger import open_store
from engine.mock.process import MockProcess


def counts(url: str, run_id: str) -> dict:
    with open_store(url, create=False) as ledger:
        return {state: n for state, n in ledger.counts(run_id).items() if n}


def test_bill_rerun_status_report_and_export_on_postgres(customers, postgres_url):
    rows = 400
    with MockProcess(p503=0.3, retry_after=0) as api:
        first = run_engine(
            "bill",
            customers(rows),
            "--url",
            api.charge_url(),
            "--db",
            postgres_url,
            "--run-id",
            "pg",
            "--max-attempts",
            1,
            "--quiet",
        )
        assert first.returncode == 1, first.stderr  # about 30 % got a 503 once and wait for the rerun
        assert f"python -m engine rerun pg --db {postgres_url}" in first.stderr
        left = counts(postgres_url, "pg").get("failed", 0)
        assert 60 < left < 200
        api.configure(p503=0.0)
        rerun = run_engine("rerun", "pg", "--db", postgres_url, "--quiet")
        assert rerun.returncode == 0, rerun.stderr
        assert counts(postgres_url, "pg") == {"succeeded": rows}
        stats = api.stats()
        assert stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0
    status = run_engine("status", "--db", postgres_url)
    assert status.returncode == 0 and "pg" in status.stdout and "finished" in status.stdout
    report = run_engine("report", "pg", "--db", postgres_url, "--format", "json")
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert (summary["succeeded"], summary["attempts"], summary["http_status"]) == (
        rows,
        rows + left,
        {"200": rows, "503": left},
    )
    exported = run_engine("export", "pg", "--db", postgres_url, "--status", "succeeded")
    lines = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(lines) == rows and {line["status"] for line in lines} == {"succeeded"}


def test_kill_9_of_every_process_then_rerun_charges_everyone_once(customers, postgres_url, start_engine):
    rows = 3000
    with MockProcess(latency=0.05, jitter=0.02, lock_keys=False) as api:
        engine = start_engine(
            "bill",
            customers(rows),
            "--url",
            api.charge_url(),
            "--db",
            postgres_url,
            "--run-id",
            "k9",
            "--workers",
            2,
            "--concurrency",
            100,
            "--timeout",
            3,
            "--quiet",
            new_session=True,
        )
        wait_for_charges(api, 300)
        os.killpg(engine.pid, signal.SIGKILL)  # coordinator and workers, as a crash or the OOM killer would
        engine.wait(10)
        result = run_engine("rerun", "k9", "--db", postgres_url, "--quiet")
        assert result.returncode == 0, result.stderr
        assert counts(postgres_url, "k9") == {"succeeded": rows}
        stats = api.stats()
        assert stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0


def test_a_password_in_the_url_is_refused_in_one_line(customers):
    result = run_engine(
        "bill", customers(3), "--url", "http://127.0.0.1:9/{id}", "--db", "postgresql://postgres:hunter2@127.0.0.1/x"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: --db: a password in the URL") and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
