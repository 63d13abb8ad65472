"""Retention and personal data: payloads dropped once sent, old runs purged with their summaries kept,
failure lists redacted, ledger files private; and what a newcomer tripped on (a missing PostgreSQL
database, the demo's folder)."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import time

from engine.ledger import open_store
from engine.ledger.lease import Holder
from engine.mock.demo import run_demo
from engine.mock.process import MockProcess
from engine.wire import Attempt
from tests.conftest import ledger_rows, report_json


def payloads(db: str, run_id: str) -> dict[str, str | None]:
    return dict(ledger_rows(db, "SELECT status || ':' || row_id, payload FROM requests WHERE run_id = ?", run_id))


def bill(run, db, customers, run_id, api, *extra, rows=40):
    result = run(
        "bill", customers(rows), "--url", api.charge_url(), "--db", db, "--run-id", run_id,
        "--max-attempts", 1, "--quiet", *extra,
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    return result


# -- purge --------------------------------------------------------------------------------------


def test_purge_deletes_rows_and_attempts_and_keeps_the_summary(any_db, customers, run):
    with MockProcess(p500=0.2, seed=3) as api:  # retries within the pass settle every row
        result = run("bill", customers(40), "--url", api.charge_url(), "--db", any_db, "--run-id", "old", "--quiet")
    assert result.exit_code == 0, result.output
    before = report_json(run, any_db, "old")
    status_before = run("status", "--db", any_db).output
    assert before["attempts"] > before["total"] == 40

    purged = run("purge", "--older-than", "0h", "--db", any_db)

    assert purged.exit_code == 0, purged.output
    assert "purged  run old" in purged.output and "purged 1 runs" in purged.output
    assert ledger_rows(any_db, "SELECT count(*) FROM requests WHERE run_id = ?", "old") == [(0,)]
    assert ledger_rows(any_db, "SELECT count(*) FROM attempts") == [(0,)]
    after = report_json(run, any_db, "old")
    for figure in ("total", "succeeded", "failed", "attempts", "latency_ms", "http_status", "elapsed_s", "passes"):
        assert after[figure] == before[figure], figure
    assert after["purged_at"] and not before["purged_at"]
    assert run("status", "--db", any_db).output == status_before
    assert "purged     rows and attempts deleted" in run("report", "old", "--db", any_db).output
    again = run("purge", "--older-than", "0h", "--db", any_db)
    assert "purged 0 runs" in again.output  # a purged run is not listed again


def test_dry_run_deletes_nothing(any_db, customers, run, api):
    bill(run, any_db, customers, "dry", api)
    rows = ledger_rows(any_db, "SELECT count(*) FROM requests")

    shown = run("purge", "--older-than", "0d", "--dry-run", "--db", any_db)

    assert shown.exit_code == 0, shown.output
    assert "would purge run dry (finished): 40 rows, 40 attempts" in shown.output
    assert ledger_rows(any_db, "SELECT count(*) FROM requests") == rows
    assert report_json(run, any_db, "dry")["purged_at"] is None


def test_only_runs_that_ended_before_the_age_are_purged(db, customers, run, api):
    bill(run, db, customers, "recent", api)
    kept = run("purge", "--older-than", "1w", "--db", db)
    assert "purged 0 runs" in kept.output and "recent" not in kept.output
    assert ledger_rows(db, "SELECT count(*) FROM requests") == [(40,)]
    for bad in ("90", "d", "3m", "-1d"):
        refused = run("purge", "--older-than", bad, "--db", db)
        assert refused.exit_code == 2 and "--older-than" in refused.output, bad


def test_unfinished_runs_are_kept_unless_asked(any_db, customers, run):
    with MockProcess(p500=1.0) as api:
        bill(run, any_db, customers, "failing", api, rows=10)
    with open_store(any_db) as store:  # a run another live process is sending
        store.claim_run(
            "held", Holder.this_process(), input="-", url="http://x", method="POST", options={}, not_before=None,
            timeout=30,
        )  # fmt: skip

    kept = run("purge", "--older-than", "0h", "--db", any_db)

    assert kept.exit_code == 0, kept.output
    assert "kept    run failing (finished): 10 rows, 10 attempts: 10 rows may still be sent" in kept.output
    assert "kept    run held (loading)" in kept.output and "held by" in kept.output
    assert ledger_rows(any_db, "SELECT count(*) FROM requests WHERE run_id = ?", "failing") == [(10,)]

    forced = run("purge", "--older-than", "0h", "--include-unfinished", "--db", any_db)

    assert "purged  run failing" in forced.output and "kept    run held" in forced.output, forced.output
    assert ledger_rows(any_db, "SELECT count(*) FROM requests WHERE run_id = ?", "failing") == [(0,)]
    assert report_json(run, any_db, "failing")["failed"] == 10


# -- keep-payload ---------------------------------------------------------------------------------


def test_default_drops_payloads_of_rows_that_succeeded_and_rerun_still_sends_the_rest(any_db, customers, run):
    with MockProcess(fail_rate=0.3, seed=5) as api:
        bill(run, any_db, customers, "k", api)
        stored = payloads(any_db, "k")
        succeeded = {k: v for k, v in stored.items() if k.startswith("succeeded:")}
        failed = {k: v for k, v in stored.items() if k.startswith("failed:")}
        assert succeeded and failed
        assert all(v is None for v in succeeded.values())
        assert all(json.loads(v)["id"] == k.split(":")[1] for k, v in failed.items())
        keys = ledger_rows(any_db, "SELECT count(*) FROM requests WHERE idempotency_key IS NOT NULL")
        assert keys == [(40,)]

        api.configure(fail_rate=0.0)
        rerun = run("rerun", "k", "--db", any_db, "--quiet")

        assert rerun.exit_code == 0, rerun.output
        assert api.stats()["customers_charged"] == 40
    assert set(payloads(any_db, "k").values()) == {None}


def test_keep_payload_all_keeps_every_payload(db, customers, run, api):
    bill(run, db, customers, "all", api, "--keep-payload", "all")
    assert None not in payloads(db, "all").values()
    assert json.loads(ledger_rows(db, "SELECT options FROM runs")[0][0])["keep_payload"] == "all"


def test_keep_payload_none_also_drops_rows_refused_for_good(any_db):
    with open_store(any_db) as store:
        store.create_run(
            "n", input="-", url="http://x", method="POST", options={"keep_payload": "none"}, not_before=None
        )
        store.insert_requests("n", [(line, f"r{line}", 0.0, '{"id": 1}', f"key{line}") for line in (1, 2, 3)])
        rids = [rid for (rid,) in ledger_rows(any_db, "SELECT rid FROM requests ORDER BY rid")]
        now = time.time()
        outcomes = ("succeeded", "rejected", "failed")
        store.record(
            [
                Attempt(rid, 1, outcome, 200, None, None, None, now, 5.0)
                for rid, outcome in zip(rids, outcomes, strict=True)
            ]
        )
    assert payloads(any_db, "n") == {"succeeded:r1": None, "rejected:r2": None, "failed:r3": '{"id": 1}'}


def test_an_unknown_keep_payload_is_refused(db, customers, run, api):
    refused = run("bill", customers(3), "--url", api.charge_url(), "--db", db, "--keep-payload", "some")
    assert refused.exit_code == 2 and "--keep-payload" in refused.output


# -- export ----------------------------------------------------------------------------------------


def test_export_redacts_fields_and_writes_the_payload_as_an_object(db, customers, run):
    with MockProcess(p500=1.0) as api:
        run(
            "bill", customers(5, extra={"email": "a@example.com"}), "--url", api.charge_url(), "--db", db,
            "--run-id", "x", "--max-attempts", 1, "--quiet",
        )  # fmt: skip
    lines = run("export", "x", "--db", db, "--format", "jsonl", "--redact", "email", "--redact", "amount")
    assert lines.exit_code == 0, lines.output
    rows = [json.loads(line) for line in lines.output.splitlines()]
    assert len(rows) == 5
    assert all(row["payload"] == {"id": row["row_id"], "amount": "[redacted]", "email": "[redacted]"} for row in rows)
    plain = run("export", "x", "--db", db, "--format", "jsonl")
    assert json.loads(plain.output.splitlines()[0])["payload"]["email"] == "a@example.com"
    as_csv = run("export", "x", "--db", db, "--redact", "email")
    exported = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert all(json.loads(row["payload"])["email"] == "[redacted]" for row in exported)
    assert "a@example.com" not in as_csv.output and "a@example.com" not in lines.output


# -- files, PostgreSQL, demo ---------------------------------------------------------------------------------


def test_a_new_ledger_file_and_its_wal_are_readable_by_their_owner_only(tmp_path, customers, run, api):
    db = str(tmp_path / "private.db")
    old = os.umask(0o022)
    try:
        with open_store(db) as store:
            store.create_run("m", input="-", url="http://x", method="POST", options={}, not_before=None)
            for path in (db, db + "-wal", db + "-shm"):
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    finally:
        os.umask(old)


def test_a_missing_postgres_database_says_to_create_it(postgres_url, customers, run, api):
    missing = "postgresql://postgres@127.0.0.1:5432/engine_no_such_db_25"
    result = run("bill", customers(3), "--url", api.charge_url(), "--db", missing)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "database does not exist; create it first: createdb -h 127.0.0.1 -p 5432 -U postgres" in line
    assert line.endswith("engine_no_such_db_25")


def test_the_demo_removes_its_temporary_folder_and_keeps_a_given_one(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert run_demo(users=20, workers=1, concurrency=20, directory=None, quiet=True) == 0
    assert not [name for name in os.listdir(tmp_path) if name.startswith("engine-demo-")]
    kept = tmp_path / "kept"
    assert run_demo(users=20, workers=1, concurrency=20, directory=str(kept), quiet=True) == 0
    assert sorted(os.listdir(kept))[:2] == ["customers.csv", "demo.db"]
