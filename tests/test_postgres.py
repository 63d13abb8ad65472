"""The PostgreSQL ledger end to end, on a real server on 127.0.0.1 and real engine processes.

The ledger contract itself runs against PostgreSQL in tests/test_ledger.py; here the
commands do: bill, kill -9 of every process, rerun, status, report and export.
"""

from __future__ import annotations

import csv
import io
import json

from conftest import (
    assert_everyone_charged_once,
    bill_args,
    kill_then_rerun,
    run_engine,
    status_counts,
    wait_for_charges,
)

from engine.mock.process import MockProcess


def test_bill_rerun_status_report_and_export_on_postgres(customers, postgres_url):
    rows = 400
    with MockProcess(p503=0.3, retry_after=0) as api:
        first = run_engine(*bill_args(customers(rows), api, postgres_url, "pg", "--max-attempts", 1, "--quiet"))
        assert first.returncode == 1, first.stderr  # about 30 % got a 503 once and wait for the rerun
        assert f"python -m engine rerun pg --db {postgres_url}" in first.stderr
        left = status_counts(postgres_url, "pg").get("failed", 0)
        assert 60 < left < 200
        api.configure(p503=0.0)
        rerun = run_engine("rerun", "pg", "--db", postgres_url, "--quiet")
        assert rerun.returncode == 0, rerun.stderr
        assert_everyone_charged_once(api, postgres_url, "pg", rows)
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
            *bill_args(customers(rows), api, postgres_url, "k9", "--workers", 2, "--concurrency", 100, "--timeout", 3),
            "--quiet",
            new_session=True,
        )
        wait_for_charges(api, 300)
        kill_then_rerun(
            engine, postgres_url, "k9", group=True
        )  # coordinator and workers, as a crash or the OOM killer would
        assert_everyone_charged_once(api, postgres_url, "k9", rows)


def test_a_password_in_the_url_is_refused_in_one_line(customers):
    result = run_engine(
        "bill", customers(3), "--url", "http://127.0.0.1:9/{id}", "--db", "postgresql://postgres:hunter2@127.0.0.1/x"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: --db: a password in the URL") and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
