"""Whole runs through the CLI against the real mock API on 127.0.0.1."""

from conftest import bill_args, ledger_rows, report_json, status_counts

ATTEMPTS_OF_RUN = "SELECT count(*) FROM attempts JOIN requests USING (rid) WHERE run_id = ?"


def test_5000_rows_each_charged_exactly_once(api, customers, db, run):
    path = customers(5000)
    result = run(*bill_args(path, api, db, "r1", "--workers", 2, "--concurrency", 200, "--quiet"))
    assert result.exit_code == 0, result.output
    assert status_counts(db, "r1") == {"succeeded": 5000}
    stats = api.stats()
    assert stats["customers_charged"] == 5000
    assert stats["customers_charged_more_than_once"] == 0
    assert stats["charges"] == 5000
    summary = report_json(run, db, "r1")
    assert summary["succeeded"] == summary["total"] == 5000
    assert summary["http_status"] == {"200": 5000}


def test_failed_rows_are_rerun_after_the_api_heals(api, customers, db, run):
    api.configure(fail_rate=0.05)
    path = customers(1000)
    result = run(*bill_args(path, api, db, "r2", "--max-attempts", 2, "--backoff-base", 0.01, "--quiet"))
    assert result.exit_code == 1, result.output
    assert "python -m engine rerun r2" in result.output
    counts = status_counts(db, "r2")
    assert 20 < counts["failed"] < 100 and counts["failed"] + counts["succeeded"] == 1000
    failed_ids = {row_id for (row_id,) in ledger_rows(db, "SELECT row_id FROM requests WHERE status='failed'")}

    api.configure(fail_rate=0.0)
    result = run("rerun", "r2", "--db", db, "--quiet")
    assert result.exit_code == 0, result.output
    assert status_counts(db, "r2") == {"succeeded": 1000}
    stats = api.stats()
    assert stats["customers_charged"] == 1000
    assert stats["customers_charged_more_than_once"] == 0
    # the rerun sent only the rows that had failed, each with the key it had before
    second_pass = ledger_rows(
        db, "SELECT DISTINCT r.row_id FROM attempts a JOIN requests r USING (rid) WHERE a.attempt > 2"
    )
    assert {row_id for (row_id,) in second_pass} <= failed_ids
    keys = ledger_rows(db, "SELECT DISTINCT idempotency_key FROM requests WHERE row_id = 'cus_1'")
    assert keys == [("r2:cus_1",)]


def test_rejected_rows_are_final_and_not_rerun_by_default(api, tmp_path, db, run):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n')
    # the body template names no customer, so the mock API answers 400: a final answer
    result = run(
        "bill",
        str(path),
        "--url",
        f"{api.base_url}/v1/charges",
        "--db",
        db,
        "--run-id",
        "r3",
        "--body-template",
        _template(tmp_path, '{"note": "{id}"}'),
        "--quiet",
    )
    assert result.exit_code == 1
    assert status_counts(db, "r3") == {"rejected": 2}
    assert ledger_rows(db, ATTEMPTS_OF_RUN, "r3") == [(2,)]
    result = run("rerun", "r3", "--db", db, "--quiet")
    assert ledger_rows(db, ATTEMPTS_OF_RUN, "r3") == [(2,)]
    result = run("rerun", "r3", "--db", db, "--include-rejected", "--quiet")
    assert ledger_rows(db, ATTEMPTS_OF_RUN, "r3") == [(4,)]


def _template(tmp_path, text):
    path = tmp_path / "body.json"
    path.write_text(text)
    return str(path)


def test_transient_errors_are_retried_within_the_pass(api, customers, db, run):
    api.configure(p500=0.2, p503=0.1, retry_after=0)
    result = run(
        *bill_args(
            customers(500),
            api,
            db,
            "r4",
            "--max-attempts",
            20,
            "--backoff-base",
            0.01,
            "--backoff-cap",
            0.05,
            "--quiet",
        )
    )
    assert result.exit_code == 0, result.output
    assert status_counts(db, "r4") == {"succeeded": 500}
    attempts = ledger_rows(db, ATTEMPTS_OF_RUN, "r4")[0][0]
    assert attempts > 550
    assert api.stats()["customers_charged_more_than_once"] == 0


def test_priority_field_sends_higher_priority_first(api, tmp_path, db, run):
    path = tmp_path / "prio.csv"
    path.write_text("id,prio\n" + "".join(f"c{n},{n % 3}\n" for n in range(30)))
    result = run(
        *bill_args(
            str(path),
            api,
            db,
            "p",
            "--priority-field",
            "prio",
            "--workers",
            1,
            "--concurrency",
            1,
            "--chunks",
            1,
            "--quiet",
        )
    )
    assert result.exit_code == 0, result.output
    order = [
        row_id
        for (row_id,) in ledger_rows(
            db, "SELECT r.row_id FROM attempts a JOIN requests r USING (rid) ORDER BY a.started_at"
        )
    ]
    expected = [f"c{n}" for p in (2, 1, 0) for n in range(30) if n % 3 == p]
    assert order == expected


def test_delay_sends_nothing_before_its_time(api, customers, db, run):
    import time

    before = time.time()
    result = run(*bill_args(customers(20), api, db, "d", "--delay", 1.5, "--quiet"))
    assert result.exit_code == 0, result.output
    first = ledger_rows(db, "SELECT min(started_at) FROM attempts")[0][0]
    assert first >= before + 1.5


def test_secrets_never_reach_the_ledger_or_the_log(api, customers, db, run, tmp_path):
    secret = "sk_live_THIS_IS_SECRET_42"
    log = tmp_path / "events.jsonl"
    api.configure(p500=0.3)
    result = run(
        *bill_args(
            customers(50),
            api,
            db,
            "s",
            "--header",
            "Authorization: Bearer ${BILLING_TOKEN}",
            "--log-file",
            log,
            "--backoff-base",
            0.01,
            "--max-attempts",
            20,  # 30 % of answers fail at random
            "--quiet",
        ),
        env={"BILLING_TOKEN": secret},
    )
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    for path in (db, db + "-wal", str(log)):
        try:
            assert secret.encode() not in open(path, "rb").read()
        except FileNotFoundError:
            pass
    events = [line for line in log.read_text().splitlines()]
    assert any('"attempt_failed"' in e for e in events) and any('"run_start"' in e for e in events)


def test_a_typed_secret_is_refused(api, customers, db, run):
    result = run(
        "bill",
        customers(5),
        "--url",
        api.charge_url(),
        "--db",
        db,
        "--header",
        "Authorization: Bearer sk_live_typed_in_argv",
    )
    assert result.exit_code == 2
    assert "environment" in result.output
    assert api.stats()["requests"] == 0


def test_rerun_script_finishes_a_run(api, customers, db, run):
    import subprocess
    import sys
    from pathlib import Path

    api.configure(fail_rate=0.2)
    assert run(*bill_args(customers(100), api, db, "sc", "--max-attempts", 1, "--quiet")).exit_code == 1
    api.configure(fail_rate=0.0)
    script = Path(__file__).resolve().parent.parent / "scripts" / "rerun_failed.py"
    done = subprocess.run(
        [sys.executable, str(script), "sc", "--db", db, "--quiet"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "100 succeeded" in done.stdout
    assert status_counts(db, "sc") == {"succeeded": 100}
    assert api.stats()["customers_charged_more_than_once"] == 0


def test_a_load_cut_short_is_loaded_again_by_the_same_bill(api, customers, db, run):
    from engine.ledger import open_store

    path = customers(50)
    with open_store(db) as ledger:  # what a coordinator killed while loading leaves behind
        ledger.create_run("cut", input=path, url=api.charge_url(), method="POST", options={}, not_before=None)
        ledger.insert_requests("cut", [(2, "cus_1", 0.0, '{"id":"cus_1"}', "cut:cus_1")])
    result = run("rerun", "cut", "--db", db)
    assert result.exit_code == 2 and "never finished loading" in result.output
    result = run(*bill_args(path, api, db, "cut", "--quiet"))
    assert result.exit_code == 0, result.output
    assert status_counts(db, "cut") == {"succeeded": 50}
    assert api.stats()["customers_charged_more_than_once"] == 0
