"""``bill --dry-run``: every row validated as a real run would, nothing sent, no run recorded."""

import os

from conftest import ledger_rows

TOKEN = "sk_live_dry_run_secret_123"


def _bill(run, api, path, db, *extra, env=None):
    return run(
        "bill",
        path,
        "--url",
        api.charge_url(),
        "--header",
        "Authorization: Bearer ${API_TOKEN}",
        "--db",
        db,
        *extra,
        env={"API_TOKEN": TOKEN, **(env or {})},
    )


def test_dry_run_shows_what_would_be_sent_and_sends_nothing(api, customers, any_db, run):
    path = customers(250)
    result = _bill(run, api, path, any_db, "--dry-run", "--sum-field", "amount", "--field", "amount:int")
    assert result.exit_code == 0, result.output
    host = api.base_url.split("://")[1]
    assert "250 rows would be sent" in result.output
    assert f"hosts      {host}" in result.output
    assert f"POST {api.base_url}/v1/customers/cus_1/charges" in result.output
    assert "Authorization: Bearer [redacted]" in result.output
    assert "Idempotency-Key: " in result.output
    assert '"amount": 2' in result.output or '"amount":2' in result.output
    assert f"amount = {sum(n % 100 + 1 for n in range(1, 251)):,}" in result.output
    assert TOKEN not in result.output
    assert api.stats()["requests"] == 0
    if any_db.startswith("postgres"):
        tables = (
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_name = 'runs' AND table_schema = current_schema()"
        )
        if ledger_rows(any_db, tables) == [(1,)]:
            assert ledger_rows(any_db, "SELECT count(*) FROM runs") == [(0,)]
    else:
        assert not os.path.exists(any_db)  # the real ledger is not even created


def test_dry_run_then_bill_uses_the_keys_it_showed(api, customers, db, run):
    path = customers(3)
    shown = _bill(run, api, path, db, "--dry-run")
    key = next(line.split(": ", 1)[1] for line in shown.output.splitlines() if "Idempotency-Key:" in line)
    assert _bill(run, api, path, db, "--quiet").exit_code == 0
    assert (key,) in ledger_rows(db, "SELECT idempotency_key FROM requests WHERE row_id = 'cus_1'")


def test_dry_run_refuses_a_bad_row_as_a_real_run_does(api, tmp_path, db, run):
    path = tmp_path / "bad.csv"
    path.write_text("id,amount\ncus_1,5\ncus_2,five\n")
    dry = _bill(run, api, str(path), db, "--dry-run", "--field", "amount:int")
    real = _bill(run, api, str(path), db, "--field", "amount:int")
    assert dry.exit_code == real.exit_code == 2
    assert dry.output.strip() == real.output.strip()
    assert "bad.csv:3" in dry.output
    assert api.stats()["requests"] == 0


def test_sum_field_that_is_not_a_number_is_refused_with_its_line(api, tmp_path, db, run):
    path = tmp_path / "amounts.csv"
    path.write_text("id,amount\ncus_1,5\ncus_2,n/a\n")
    result = _bill(run, api, str(path), db, "--dry-run", "--sum-field", "amount")
    assert result.exit_code == 2
    assert "amounts.csv:3" in result.output and "amount" in result.output
