"""An API that answers "this idempotency key was first used with other parameters" (Stripe's 400
``idempotency_error``): the row is ``key_conflict``, sent once, never again by a plain rerun."""

from __future__ import annotations

import json

from conftest import ledger_rows, status_counts

from engine.mock.process import MockProcess


def test_a_key_conflict_is_its_own_state_counted_everywhere_and_never_resent(customers, db, run):
    rows = 200
    with MockProcess(p_key_conflict=0.2, seed=5) as api:
        billed = run("bill", customers(rows), "--url", api.charge_url(), "--db", db, "--run-id", "kc")
        conflicts = api.stats()["http_status"].get("400", 0)
        counts = status_counts(db, "kc")
        assert conflicts > 10 and counts == {"succeeded": rows - conflicts, "key_conflict": conflicts}, counts
        assert ledger_rows(db, "SELECT max(attempts) FROM requests WHERE status = 'key_conflict'") == [(1,)]
        said = " ".join(billed.output.split())
        assert f"{conflicts} key conflicts" in said and f"CONFLICT {conflicts} rows were refused" in said
        assert "a new --run-id bills them again" in said
        requests = api.stats()["requests"]
        again = run("rerun", "kc", "--db", db)
        assert api.stats()["requests"] == requests, again.output  # a plain rerun sends none of them
    assert status_counts(db, "kc")["key_conflict"] == conflicts
    summary = json.loads(run("report", "kc", "--db", db, "--format", "json").output)
    assert summary["key_conflict"] == conflicts
    assert "key_conflict" in run("report", "kc", "--db", db, "--format", "csv").output.splitlines()[0]
    table = run("status", "--db", db).output.splitlines()
    assert "key_conflict" in table[0] and str(conflicts) in table[1].split()
