"""A run id is claimed once: two ``bill --run-id R`` at once, and a load killed halfway.

Real engine processes, a real mock API on 127.0.0.1, both ledgers. The promise under
test: the second ``bill`` is refused (exit 2) naming the holder, the first completes,
and every charge the API saw has its row in the ledger.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import run_engine

from engine.ledger import open_store
from engine.mock.process import MockProcess
from engine.states import SUCCEEDED

#: Rows enough that loading takes seconds: the second bill starts while the first loads.
BIG = 200_000


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path) -> str:
    return str(tmp_path / "ledger.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def run_state(ledger: str, run_id: str) -> str | None:
    try:
        with open_store(ledger) as store:
            return store.get_run(run_id)["state"] if store.has_run(run_id) else None
    except Exception:  # the file is being created
        return None


def wait_loading(ledger: str, run_id: str, engine, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while run_state(ledger, run_id) != "loading":
        assert engine.poll() is None, engine.communicate()
        assert time.monotonic() < deadline, "the run never started loading"
        time.sleep(0.02)


def test_a_second_bill_of_a_run_id_being_loaded_is_refused_naming_its_holder(ledger, customers, start_engine, tmp_path):
    path = customers(BIG)
    with MockProcess() as api:
        bill = ["bill", path, "--url", api.charge_url(), "--db", ledger, "--run-id", "R", "--quiet"]
        first = start_engine(*bill)
        wait_loading(ledger, "R", first)
        second = run_engine(*bill)
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        assert f":{first.pid}:" in second.stderr and "loading" in second.stderr, second.stderr
        assert run_state(ledger, "R") == "loading", "the first load ended before the second bill: more rows"
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
        stats = api.stats()
    with open_store(ledger) as store:
        counts = store.counts("R")
    assert counts[SUCCEEDED] == BIG == sum(counts.values())  # every charge has its row
    assert stats["customers_charged"] == BIG and stats["customers_charged_more_than_once"] == 0


def test_a_bill_killed_while_loading_is_taken_over_by_the_next(customers, db, start_engine):
    path = customers(BIG)
    with MockProcess() as api:
        bill = ["bill", path, "--url", api.charge_url(), "--db", db, "--run-id", "R", "--quiet"]
        killed = start_engine(*bill, new_session=True)
        wait_loading(db, "R", killed)
        time.sleep(0.3)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert run_state(db, "R") == "loading"
        done = run_engine(*bill, timeout=600)
        assert done.returncode == 0, done.stderr
        stats = api.stats()
    with open_store(db) as store:
        assert store.counts("R")[SUCCEEDED] == BIG
    assert stats["customers_charged"] == BIG and stats["customers_charged_more_than_once"] == 0
