"""A run id is claimed once: two ``bill --run-id R`` at once, and a load killed halfway.

Real engine processes, a real mock API on 127.0.0.1, both ledgers. The promise under
test: the second ``bill`` is refused (exit 2) naming the holder, the first completes,
and every charge the API saw has its row in the ledger.

The first bill reads its rows from standard input, which the test writes: the load is
still under way, for as long as the test needs, until the test closes that pipe.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import ledger_rows, run_engine, start_loading

from engine.ledger import open_store
from engine.mock.process import MockProcess
from engine.states import SUCCEEDED

#: Rows of the bill, on the first bill's standard input (:func:`conftest.start_loading`): several load
#: batches (``engine.run.loading.LOAD_BATCH``), the first written before the test acts and the rest after.
ROWS = 5000
#: Rows written before the test acts: more than one load batch, so rows are in the ledger by then.
FIRST = 3000


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path) -> str:
    return str(tmp_path / "ledger.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def run_state(ledger: str, run_id: str) -> str | None:
    try:
        with open_store(ledger) as store:
            return store.get_run(run_id)["state"] if store.has_run(run_id) else None
    except Exception:  # the file is being created
        return None


def wait_loading(ledger: str, run_id: str, engine, rows: int = 0, limit: float = 60) -> None:
    """Until run ``run_id`` is loading and at least ``rows`` of it are in the ledger."""
    deadline = time.monotonic() + limit
    while run_state(ledger, run_id) != "loading" or loaded(ledger, run_id) < rows:
        assert engine.poll() is None, engine.communicate()
        assert time.monotonic() < deadline, f"the run never started loading, or fewer than {rows} rows"
        time.sleep(0.02)


def loaded(ledger: str, run_id: str) -> int:
    return ledger_rows(ledger, "SELECT count(*) FROM requests WHERE run_id = ?", run_id)[0][0]


def bill_of(source: str, api: MockProcess, ledger: str) -> list:
    return ["bill", source, "--format", "csv", "--url", api.charge_url(), "--db", ledger, "--run-id", "R", "--quiet"]


def test_a_second_bill_of_a_run_id_being_loaded_is_refused_naming_its_holder(ledger, customers, start_engine):
    path = customers(ROWS)
    with MockProcess() as api:
        first = start_loading(start_engine, path, FIRST, *bill_of("-", api, ledger))
        wait_loading(ledger, "R", first)
        second = run_engine(*bill_of(path, api, ledger))
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        assert f":{first.pid}:" in second.stderr and "loading" in second.stderr, second.stderr
        assert run_state(ledger, "R") == "loading"  # the first load waits for the rest of its input
        _, err = first.communicate(first.rest, timeout=240)  # the rest of its input, then its end
        assert first.returncode == 0, err
        stats = api.stats()
    with open_store(ledger) as store:
        counts = store.counts("R")
    assert counts[SUCCEEDED] == ROWS == sum(counts.values())  # every charge has its row
    assert stats["customers_charged"] == ROWS and stats["customers_charged_more_than_once"] == 0


def test_a_bill_killed_while_loading_is_taken_over_by_the_next(customers, db, start_engine):
    path = customers(ROWS)
    with MockProcess() as api:
        killed = start_loading(start_engine, path, FIRST, *bill_of("-", api, db))
        wait_loading(db, "R", killed, rows=1)  # some of its rows are written: the next bill must remove them
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert run_state(db, "R") == "loading"
        done = run_engine(*bill_of(path, api, db))
        assert done.returncode == 0, done.stderr
        stats = api.stats()
    with open_store(db) as store:
        assert store.counts("R")[SUCCEEDED] == ROWS == sum(store.counts("R").values())
    assert stats["customers_charged"] == ROWS and stats["customers_charged_more_than_once"] == 0
