"""A run id is claimed once: two ``bill --run-id R`` at once, and a load killed halfway.

Real engine processes, a real mock API on 127.0.0.1, both ledgers. The promise under
test: the second ``bill`` is refused (exit 2) naming the holder, the first completes,
and every charge the API saw has its row in the ledger.

The first bill reads its rows from standard input, which the test writes: the load is
still under way, for as long as the test needs, until the test closes that pipe. Any input
is read ahead by a forked reader (``engine.run.read_ahead``); the tests that cut such a load
short give the bill a named pipe as its file, or its standard input.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import children, ledger_rows, run_engine, start_loading

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


def test_a_bill_killed_while_loading_is_taken_over_by_the_next(customers, ledger, start_engine):
    path = customers(ROWS)
    with MockProcess() as api:
        killed = start_loading(start_engine, path, FIRST, *bill_of("-", api, ledger))
        wait_loading(ledger, "R", killed, rows=1)  # some of its rows are written: the next bill must remove them
        reader = reader_of(killed)  # standard input too is read ahead
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert gone(reader, 10), "the reader outlived its engine"  # its input is still open: it would wait on
        killed.stdin.close()
        assert run_state(ledger, "R") == "loading"
        done = run_engine(*bill_of(path, api, ledger))
        assert done.returncode == 0, done.stderr
        stats = api.stats()
    with open_store(ledger) as store:
        assert store.counts("R")[SUCCEEDED] == ROWS == sum(store.counts("R").values())
    assert stats["customers_charged"] == ROWS and stats["customers_charged_more_than_once"] == 0


def start_reading_ahead(start_engine, tmp_path, path: str, first: int, api: MockProcess, ledger: str):
    """``bill FIFO`` of run R, fed the header and the first ``first`` rows of the CSV ``path`` through a
    named pipe that stays open (``.feed``; the rest is ``.rest``): a file, so its reader is a helper process."""
    fifo = tmp_path / "customers-fifo.csv"
    os.mkfifo(fifo)
    engine = start_engine(*bill_of(str(fifo), api, ledger))
    deadline = time.monotonic() + 30
    while True:
        try:
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as err:  # ENXIO: its reader has not opened it yet
            assert err.errno == errno.ENXIO and time.monotonic() < deadline, err
            assert engine.poll() is None, engine.communicate()
            time.sleep(0.02)
    os.set_blocking(descriptor, True)
    lines = Path(path).read_text().splitlines(keepends=True)
    engine.feed = os.fdopen(descriptor, "w")
    engine.feed.write("".join(lines[: first + 1]))
    engine.feed.flush()
    engine.rest = "".join(lines[first + 1 :])
    return engine


def reader_of(engine) -> int:
    """The engine's forked input reader: its child with the engine's own command line."""
    own = Path(f"/proc/{engine.pid}/cmdline").read_bytes()
    (reader,) = [child for child in children(engine.pid) if Path(f"/proc/{child}/cmdline").read_bytes() == own]
    return reader


def gone(pid: int, limit: float) -> bool:
    """Whether process ``pid`` has ended (or is a zombie nobody waits for) within ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_a_file_whose_reader_is_killed_mid_load_sends_nothing_and_says_so(customers, ledger, start_engine, tmp_path):
    with MockProcess() as api:
        engine = start_reading_ahead(start_engine, tmp_path, customers(ROWS), FIRST, api, ledger)
        wait_loading(ledger, "R", engine, rows=1)
        os.kill(reader_of(engine), signal.SIGKILL)
        _, err = engine.communicate(timeout=60)
        engine.feed.close()
        assert engine.returncode == 1, err
        assert err.strip().splitlines() == ["error: the process reading the input died (exit code -9)"], err
        assert api.stats()["requests"] == 0
    assert run_state(ledger, "R") is None  # its half load is gone: the same bill starts again from nothing


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_file_load_stopped_by_a_signal_ends_its_reader_and_leaves_no_run(
    customers, ledger, start_engine, tmp_path, signum
):
    with MockProcess() as api:
        engine = start_reading_ahead(start_engine, tmp_path, customers(ROWS), FIRST, api, ledger)
        wait_loading(ledger, "R", engine, rows=1)
        reader = reader_of(engine)
        engine.send_signal(signum)
        _, err = engine.communicate(timeout=60)
        engine.feed.close()
        assert engine.returncode in (130, 143), err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert gone(reader, 10), "the reader outlived its engine"
        assert api.stats()["requests"] == 0
    assert run_state(ledger, "R") is None


def test_a_file_reader_ends_with_its_killed_engine(customers, ledger, start_engine, tmp_path):
    with MockProcess() as api:
        engine = start_reading_ahead(start_engine, tmp_path, customers(ROWS), FIRST, api, ledger)
        wait_loading(ledger, "R", engine, rows=1)
        reader = reader_of(engine)
        engine.kill()
        engine.wait()
        assert gone(reader, 10), "the reader outlived its engine"  # the named pipe is still open: it would wait on
        engine.feed.close()
        assert "Traceback" not in engine.stderr.read()
        done = run_engine(*bill_of(customers(ROWS), api, ledger))  # the next bill takes the run over
        assert done.returncode == 0, done.stderr
        assert api.stats()["customers_charged"] == ROWS
