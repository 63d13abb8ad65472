"""Shared fixtures: a real mock billing API on 127.0.0.1, input files, and a CLI runner."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.mockproc import MockProcess


@pytest.fixture
def api():
    """A fresh mock billing API in its own process, answering at once."""
    with MockProcess() as server:
        yield server


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "ledger.db")


def write_csv(path, count: int, start: int = 1, extra: dict | None = None):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        columns = ["id", "amount", *(extra or {})]
        writer.writerow(columns)
        for n in range(start, start + count):
            writer.writerow([f"cus_{n}", n % 100 + 1, *((extra or {}).values())])
    return str(path)


@pytest.fixture
def customers(tmp_path):
    """``customers(n)`` writes a CSV of n customers and returns its path."""
    return lambda count, name="customers.csv", **kw: write_csv(tmp_path / name, count, **kw)


@pytest.fixture
def run():
    """Invoke the CLI in-process; returns click's Result."""
    runner = CliRunner()

    def invoke(*args, env=None, input=None):
        return runner.invoke(cli, [str(a) for a in args], env=env, input=input, catch_exceptions=True)

    return invoke


def ledger_rows(db: str, sql: str, *params):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def status_counts(db: str, run_id: str) -> dict:
    return dict(ledger_rows(db, "SELECT status, count(*) FROM requests WHERE run_id = ? GROUP BY status", run_id))


def report_json(run, db: str, run_id: str) -> dict:
    result = run("report", run_id, "--db", db, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)
