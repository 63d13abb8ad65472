"""``bill --canary N``: the first N rows in priority order, exit 4, and ``rerun`` sends the rest, nobody twice."""

import pytest
import test_cluster
from conftest import ledger_rows, run_engine, status_counts

from engine.run.result import EXIT_STOPPED

nodes = test_cluster.nodes  # the fixture that starts worker nodes


def test_canary_charges_n_then_rerun_charges_the_rest_once(api, customers, any_db, run):
    path = customers(200)
    result = run("bill", path, "--url", api.charge_url(), "--db", any_db, "--run-id", "c1", "--canary", 10, "--quiet")
    assert result.exit_code == EXIT_STOPPED == 4, result.output
    assert status_counts(any_db, "c1") == {"succeeded": 10, "pending": 190}
    assert api.stats()["customers_charged"] == 10
    assert "canary: the first 10 rows were sent; the other 190 wait" in result.output
    assert f"python -m engine rerun c1 --db {any_db}" in result.output
    assert "10 succeeded" in result.output
    keys_before = dict(ledger_rows(any_db, "SELECT row_id, idempotency_key FROM requests WHERE run_id = 'c1'"))

    again = run("rerun", "c1", "--db", any_db, "--quiet")
    assert again.exit_code == 0, again.output
    assert status_counts(any_db, "c1") == {"succeeded": 200}
    stats = api.stats()
    assert stats["customers_charged"] == 200 and stats["customers_charged_more_than_once"] == 0
    assert stats["charges"] == 200
    assert dict(ledger_rows(any_db, "SELECT row_id, idempotency_key FROM requests WHERE run_id = 'c1'")) == keys_before


def test_canary_takes_the_highest_priority_rows_first(api, tmp_path, db, run):
    path = tmp_path / "prio.csv"
    path.write_text("id,rank\n" + "".join(f"cus_{n},{n % 7}\n" for n in range(1, 51)))
    result = run(
        "bill", path, "--url", api.charge_url(), "--db", db, "--run-id", "c2", "--priority-field", "rank",
        "--canary", 5, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 4, result.output
    sent = {row for (row,) in ledger_rows(db, "SELECT row_id FROM requests WHERE status = 'succeeded'")}
    assert sent == {"cus_6", "cus_13", "cus_20", "cus_27", "cus_34"}  # rank 6, in input order


def test_canary_larger_than_the_input_sends_everything_and_still_stops_on_purpose(api, customers, db, run):
    result = run("bill", customers(3), "--url", api.charge_url(), "--db", db, "--canary", 10, "--quiet")
    assert result.exit_code == 4, result.output
    assert api.stats()["charges"] == 3
    assert "the other 0 wait" in result.output


def test_canary_must_be_positive(api, customers, db, run):
    result = run("bill", customers(3), "--url", api.charge_url(), "--db", db, "--canary", 0)
    assert result.exit_code == 2 and "--canary must be at least 1" in result.output
    assert api.stats()["requests"] == 0


def test_a_canary_through_worker_nodes_then_rerun_charges_everyone_once(customers, postgres_url, broker, nodes):
    from conftest import bill_args
    from test_cluster import charged_once

    from engine.mock.process import MockProcess

    nodes(2)
    with MockProcess(latency=0.01) as api:
        path = customers(300)
        first = run_engine(
            *bill_args(path, api, postgres_url, "cn", broker=broker), "--canary", 10, "--quiet", timeout=120
        )
        assert first.returncode == 4, first.stderr
        assert status_counts(postgres_url, "cn") == {"succeeded": 10, "pending": 290}
        assert api.stats()["customers_charged"] == 10
        rest = run_engine("rerun", "cn", "--db", postgres_url, "--broker", broker, "--quiet", timeout=120)
        assert rest.returncode == 0, rest.stderr
        assert charged_once(api, 300)


@pytest.mark.parametrize(
    ("answer", "exit_code", "counts"), [("y\n", 0, {"succeeded": 60}), ("\n", 4, {"succeeded": 10, "pending": 50})]
)
def test_on_a_terminal_the_canary_offers_to_send_the_rest_in_the_same_run(
    api, customers, db, run, monkeypatch, answer, exit_code, counts
):
    monkeypatch.setattr("engine.cli.ending.on_terminal", lambda: True)
    result = run(
        "bill", customers(60), "--url", api.charge_url(), "--db", db, "--run-id", "c3", "--canary", 10, "--quiet",
        input=answer,
    )  # fmt: skip
    assert result.exit_code == exit_code, result.output
    assert "Send the remaining 50? [y/N]" in result.output
    assert status_counts(db, "c3") == counts
    assert api.stats()["charges"] == counts["succeeded"]
    passes = 2 if exit_code == 0 else 1  # yes: the rest is the same run's second pass
    assert ledger_rows(db, "SELECT count(*) FROM passes WHERE run_id = 'c3'") == [(passes,)]
