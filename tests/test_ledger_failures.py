"""A ledger that cannot record: one clear line, exit status 3, and nothing sent that could not be recorded.

Real filesystems that fill up (a small tmpfs; the tests run as root), a real lock held by
another connection, real signals.
"""

from __future__ import annotations

import errno
import resource
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ENGINE, assert_everyone_charged_once, ledger_rows, run_engine, start_loading, wait_for_attempts

from engine.errors import LedgerError
from engine.mock.process import MockProcess


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(megabytes)``: a fresh tmpfs of that size, unmounted after the test."""
    mounted = []

    def mount(megabytes: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem holding ``folder`` to the last byte."""
    filler = folder / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: closing it has nothing left to write
        try:
            while handle.write(block):
                pass
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    return filler


def assert_one_line(result, *fragments) -> None:
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(fragment in errors[0] for fragment in fragments), result.stderr


def test_a_disk_full_while_loading_sends_nothing(customers, small_disk):
    disk = small_disk(2)
    with MockProcess() as api:
        result = run_engine(
            "bill", customers(30_000), "--url", api.charge_url(), "--db", disk / "ledger.db", "--quiet", timeout=120
        )
        assert_one_line(result, "disk is full")
        assert api.stats()["requests"] == 0


def test_a_disk_that_fills_while_loading_leaves_no_run_loading_and_the_same_bill_then_works(
    customers, small_disk, start_engine
):
    disk = small_disk(24)  # a pass needs room for its answers (check_space): 14 MB for these rows
    db = str(disk / "ledger.db")
    rows = 10_000
    path = customers(rows)
    with MockProcess() as api:
        bill = ["bill", "-", "--format", "csv", "--url", api.charge_url(), "--db", db, "--quiet"]
        engine = start_loading(start_engine, path, rows // 2, *bill)  # the load waits for the rest of its input
        deadline = time.monotonic() + 60
        while not ledger_rows_or_none(db, "SELECT count(*) FROM requests", at_least=2000):
            assert engine.poll() is None and time.monotonic() < deadline, engine.communicate()
            time.sleep(0.02)
        filler = fill(disk)  # the disk fills while the input loads
        out, err = engine.communicate(engine.rest, timeout=120)
        assert_one_line(subprocess.CompletedProcess([], engine.returncode, out, err), "disk is full")
        assert api.stats()["requests"] == 0

        filler.unlink()
        with open(path) as same_input:
            done = run_engine(*bill, stdin=same_input)  # the same command, once there is space
        assert done.returncode == 0, done.stderr
        assert ledger_rows(db, "SELECT state, count(*) FROM runs GROUP BY state") == [("finished", 1)]
        ((run_id,),) = ledger_rows(db, "SELECT run_id FROM runs")
        assert_everyone_charged_once(api, db, run_id, rows)


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler of its own for ``signum`` (SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(caught & (1 << (signum - 1)))


def ledger_rows_or_none(db: str, sql: str, at_least: int) -> bool:
    """Whether the count ``sql`` reads has reached ``at_least`` (False while the file is being made)."""
    try:
        return ledger_rows(db, sql)[0][0] >= at_least
    except (sqlite3.Error, LedgerError):  # not made yet
        return False


def test_a_disk_that_fills_mid_pass_stops_the_pass_and_a_rerun_waits_for_space(customers, small_disk, start_engine):
    disk = small_disk(16)
    db = str(disk / "ledger.db")
    rows = 3000
    with MockProcess(latency=0.2) as api:
        engine = start_engine(
            "bill",
            customers(rows),
            "--url",
            api.charge_url(),
            "--db",
            db,
            "--run-id",
            "full",
            "--timeout",  # how long a stopped pass's rows wait before they go out again
            5,
            "--workers",
            1,
            "--concurrency",
            20,
            "--quiet",
        )
        wait_for_attempts(api, db, 100)
        filler = fill(disk)
        out, err = engine.communicate(timeout=120)
        assert_one_line(subprocess.CompletedProcess([], engine.returncode, out, err), "disk is full")
        sent = api.stats()["requests"]
        assert sent < rows  # it stopped sending

        again = run_engine("rerun", "full", "--db", db, "--quiet")
        assert_one_line(again, "free")
        assert api.stats()["requests"] == sent  # nothing sent that could not be recorded

        filler.unlink()
        api.configure(latency=0.02)
        done = run_engine("rerun", "full", "--db", db, "--quiet")
        assert done.returncode == 0, done.stderr
        assert_everyone_charged_once(api, db, "full", rows)


def test_a_ledger_locked_by_another_program(customers, db):
    with MockProcess() as api:
        first = run_engine("bill", customers(5), "--url", api.charge_url(), "--db", db, "--quiet")
        assert first.returncode == 0, first.stderr
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            result = run_engine(
                "bill",
                customers(5, name="more.csv", start=100),
                "--url",
                api.charge_url(),
                "--db",
                db,
                "--busy-timeout",
                1,
                "--quiet",
            )
            assert time.monotonic() - started < 30
        finally:
            holder.rollback()
            holder.close()
        assert_one_line(result, "locked by another program", "--busy-timeout")
        assert api.stats()["requests"] == 5
    assert ledger_rows(db, "SELECT count(*) FROM runs") == [(1,)]


def test_sigterm_while_loading_stops_cleanly(customers, db, start_engine):
    with MockProcess() as api:
        bill = ["bill", "-", "--format", "csv", "--url", api.charge_url(), "--db", db, "--quiet"]
        engine = start_loading(start_engine, customers(5000), 3000, *bill)  # the load waits for the rest
        deadline = time.monotonic() + 30
        while not catches(engine.pid, signal.SIGTERM):  # the load is under way: SIGTERM is the engine's to handle
            assert time.monotonic() < deadline, "the engine did not begin loading within 30 s"
            time.sleep(0.05)
        time.sleep(0.3)
        assert engine.poll() is None, engine.communicate()
        engine.send_signal(signal.SIGTERM)
        _, err = engine.communicate(timeout=60)
        assert engine.returncode in (130, 143), err
        assert "Traceback" not in err and "leaked" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert api.stats()["requests"] == 0
    assert ledger_rows(db, "SELECT count(*) FROM runs") == [(0,)]  # no half-loaded run left behind


def test_an_open_file_limit_below_the_window_lowers_the_concurrency(customers, db):
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    rows = 1000
    with MockProcess(latency=0.3) as api:
        result = subprocess.run(
            [
                *ENGINE,
                "bill",
                customers(rows),
                "--url",
                api.charge_url(),
                "--db",
                db,
                "--run-id",
                "fd",
                "--workers",
                "1",
                "--concurrency",
                "1000",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=low_limit,
            check=False,
        )
        assert result.returncode == 0, result.stderr  # rows failed with "curl 7: could not connect" before
        assert "open-file limit (ulimit -n) is 256" in result.stderr and "to 192" in result.stderr
        assert_everyone_charged_once(api, db, "fd", rows)
