"""Fixing a typo in a template does not bill everyone again.

The same customers at the same destination are billed once per run id, whatever was
edited: on the same ledger an edited ``bill`` is refused (exit 2) naming the earlier run;
on a fresh ledger it sends the keys the API has already seen, and the API replays them.
Real engine processes and the mock API on 127.0.0.1.
"""

from __future__ import annotations

from conftest import ledger_rows, run_engine

from engine.mock.process import MockProcess

ROWS = 300
TYPO = '{"amount": "{amount}", "curency": "usd"}'
FIXED = '{"amount": "{amount}", "currency": "usd"}'


def body(tmp_path, text: str) -> str:
    path = tmp_path / "body.json"
    path.write_text(text)  # the same file, edited: as an operator fixes a typo
    return str(path)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_an_edited_bill_on_the_same_ledger_is_refused_naming_the_earlier_run(customers, db, tmp_path):
    path = customers(ROWS)
    with MockProcess() as api:
        bill = ["bill", path, "--url", api.charge_url(), "--db", db, "--quiet"]
        first = run_engine(*bill, "--body-template", body(tmp_path, TYPO))
        assert first.returncode == 0, first.stderr
        ((run_id,),) = ledger_rows(db, "SELECT run_id FROM runs")

        fixed = run_engine(*bill, "--body-template", body(tmp_path, FIXED))
        assert fixed.returncode == 2, fixed.stderr
        assert "Traceback" not in fixed.stderr
        (line,) = error_lines(fixed.stderr)
        assert run_id in line and f"{ROWS} rows" in line and "--run-id" in line, line
        header = run_engine(*bill, "--body-template", body(tmp_path, FIXED), "--header", "X-Trace: on")
        assert header.returncode == 2 and run_id in header.stderr, header.stderr
        assert ledger_rows(db, "SELECT run_id FROM runs") == [(run_id,)]  # the refused runs are gone
        stats = api.stats()
        assert stats["charges"] == ROWS and stats["customers_charged_more_than_once"] == 0

        on_purpose = run_engine(*bill, "--body-template", body(tmp_path, FIXED), "--run-id", "again")
        assert on_purpose.returncode == 0, on_purpose.stderr
        stats = api.stats()
    assert stats["charges"] == 2 * ROWS and stats["customers_charged_more_than_once"] == ROWS


def test_an_edited_bill_on_a_fresh_ledger_sends_the_same_keys(customers, tmp_path):
    path = customers(ROWS)
    first_db, fresh_db = str(tmp_path / "first.db"), str(tmp_path / "fresh.db")
    with MockProcess() as api:
        bill = ["bill", path, "--url", api.charge_url(), "--quiet"]
        first = run_engine(*bill, "--db", first_db, "--body-template", body(tmp_path, TYPO))
        assert first.returncode == 0, first.stderr
        fresh = run_engine(*bill, "--db", fresh_db, "--body-template", body(tmp_path, FIXED), "--header", "X-Trace: on")
        assert fresh.returncode == 0, fresh.stderr
        stats = api.stats()
    assert stats["customers_charged_more_than_once"] == 0, stats["double_charged_sample"]
    assert stats["replays"] == ROWS
    keys = "SELECT row_id, idempotency_key FROM requests ORDER BY row_id"
    assert ledger_rows(first_db, keys) == ledger_rows(fresh_db, keys)
