"""What an operator does to a run from outside: pause and resume it, export and replay a filtered
selection of its failures. Real processes against the real mock API on 127.0.0.1."""

from __future__ import annotations

import json
import time

from conftest import run_engine, status_counts, wait_for_charges

from engine.ledger import open_store
from engine.mock.process import MockProcess


def test_pause_stops_new_requests_within_a_second_and_resume_finishes_the_run(customers, db, start_engine):
    rows = 1500
    with MockProcess(latency=0.2, lock_keys=False) as api:
        bill = start_engine(
            "bill", customers(rows), "--url", api.charge_url(), "--db", db, "--run-id", "p", "--concurrency", 20
        )
        wait_for_charges(api, 100)
        assert run_engine("pause", "p", "--db", db).returncode == 0
        time.sleep(1.5)  # the flag is seen within 0.5 s; what was in flight (0.2 s each) finishes
        at_pause = api.stats()["requests"]
        time.sleep(2)
        assert api.stats()["requests"] == at_pause  # nothing new started while paused
        assert at_pause < rows
        assert run_engine("resume", "p", "--db", db).returncode == 0
        out, err = bill.communicate(timeout=120)
        assert bill.returncode == 0, err
        stats = api.stats()
    assert "paused by an operator" in err
    assert stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0
    with open_store(db) as store:
        (only_pass,) = store.passes("p")
    (pause,) = only_pass["pauses"]  # the period the dashboard shows
    assert pause["reason"] == "operator" and 3.0 <= pause["ended_at"] - pause["started_at"] < 10


def test_export_and_rerun_take_exactly_the_filtered_rows(customers, db):
    rows = 400
    with MockProcess(p503=0.2, p500=0.2, retry_after=0, seed=7) as api:
        first = run_engine(
            "bill", customers(rows), "--url", api.charge_url(), "--db", db, "--run-id", "f", "--max-attempts", 1
        )
        assert first.returncode == 1, first.stderr
        exported = run_engine("export", "f", "--db", db, "--http-status", "503", "--format", "jsonl")
        assert exported.returncode == 0, exported.stderr
        with_503 = [json.loads(line) for line in exported.stdout.splitlines()]
        assert with_503 and all(row["http_status"] == 503 and row["status"] == "failed" for row in with_503)
        assert all(json.loads(row["payload"])["id"] == row["row_id"] for row in with_503)
        failed_before = status_counts(db, "f")["failed"]
        assert failed_before > len(with_503)  # some failed with 500: those are not replayed
        api.configure(p503=0.0, p500=0.0)
        requests_before = api.stats()["requests"]
        again = run_engine("rerun", "f", "--db", db, "--http-status", "503")
        assert again.returncode == 1, again.stderr  # the 500s are still failed
        assert api.stats()["requests"] - requests_before == len(with_503)
    counts = status_counts(db, "f")
    assert counts["failed"] == failed_before - len(with_503)
    assert counts["succeeded"] == rows - counts["failed"]


def test_rerun_of_a_file_of_row_ids_sends_only_those(customers, db, tmp_path):
    with MockProcess(p500=1.0) as api:
        run_engine("bill", customers(50), "--url", api.charge_url(), "--db", db, "--run-id", "ids", "--max-attempts", 1)
        api.configure(p500=0.0)
        chosen = tmp_path / "ids.txt"
        chosen.write_text("cus_3\ncus_7\n\ncus_11\n")
        result = run_engine("rerun", "ids", "--db", db, "--rows", chosen)
        assert api.stats()["customers_charged"] == 3
    assert result.returncode == 1  # the other 47 still failed
    assert status_counts(db, "ids") == {"succeeded": 3, "failed": 47}
