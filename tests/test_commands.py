"""status, report, export, help: what a person reads."""

import csv
import io
import pathlib
import sqlite3
import subprocess
import sys

import pytest
from conftest import report_json

from engine.cli import cli

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def finished_run(api, customers, db, run):
    api.configure(fail_rate=0.1)
    result = run(
        "bill", customers(200), "--url", api.charge_url(), "--db", db, "--run-id", "rep", "--max-attempts", 1, "--quiet"
    )
    assert result.exit_code == 1
    return "rep"


def test_report_json_has_every_key(finished_run, db, run):
    summary = report_json(run, db, finished_run)
    for key in (
        "run_id",
        "total",
        "succeeded",
        "failed",
        "rejected",
        "pending",
        "attempts",
        "elapsed_s",
        "requests_per_s",
        "latency_ms",
        "http_status",
    ):
        assert key in summary
    assert summary["total"] == 200 and summary["succeeded"] + summary["failed"] == 200
    assert summary["failed"] > 5
    assert summary["http_status"]["503"] == summary["failed"]
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99"}
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]


def test_report_text_and_csv(finished_run, db, run):
    text = run("report", finished_run, "--db", db)
    assert text.exit_code == 0 and "succeeded" in text.output and "p95" in text.output
    table = run("report", finished_run, "--db", db, "--format", "csv")
    row = next(csv.DictReader(io.StringIO(table.output)))
    assert row["total"] == "200"


def test_export_failed_rows(finished_run, db, run):
    result = run("export", finished_run, "--db", db, "--status", "failed")
    rows = list(csv.DictReader(io.StringIO(result.output)))
    summary = report_json(run, db, finished_run)
    assert len(rows) == summary["failed"]
    assert all(r["status"] == "failed" and r["http_status"] == "503" for r in rows)
    assert all(r["idempotency_key"] == f"rep:{r['row_id']}" for r in rows)


def test_status_table(finished_run, db, run):
    result = run("status", "--db", db)
    assert result.exit_code == 0
    header, line = result.output.splitlines()[:2]
    assert header.split()[:3] == ["run", "state", "total"]
    assert line.split()[:3] == ["rep", "finished", "200"]


def test_unknown_run_is_one_line(finished_run, db, run):
    result = run("report", "nope", "--db", db)
    assert result.exit_code == 2 and result.output.strip() == f"error: no run 'nope' in {db}"


@pytest.mark.parametrize("command", [["status"], ["report", "r"], ["export", "r"], ["rerun", "r"]])
def test_reading_a_missing_ledger_creates_nothing(tmp_path, run, command):
    missing = tmp_path / "nowhere.db"
    result = run(*command, "--db", missing)
    assert result.exit_code == 2 and "no ledger at" in result.output
    assert not missing.exists()


def test_bill_refuses_an_existing_run(finished_run, customers, api, db, run):
    result = run("bill", customers(3, name="other.csv"), "--url", api.charge_url(), "--db", db, "--run-id", "rep")
    assert result.exit_code == 2 and "rerun rep" in result.output


@pytest.mark.parametrize("name", cli.list_commands(None))
def test_every_command_has_help_with_an_example_and_is_in_the_readme(name, run):
    result = run(name, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.output
    command = cli.get_command(None, name)
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert param.help, f"{name} {param.opts} has no help"
    assert f"engine {name}" in README.read_text(), f"README does not document '{name}'"


def test_export_writes_readable_numbers(finished_run, db, run):
    with sqlite3.connect(db) as conn:  # a latency whose double prints as 185.25900000000001
        conn.execute("UPDATE requests SET latency_ms = 185.25900000000001 WHERE status = 'failed'")
    result = run("export", finished_run, "--db", db)
    assert result.exit_code == 0
    assert "185.259," in result.output and "185.25900000000001" not in result.output


def test_export_with_no_matching_row_still_writes_the_header(finished_run, db, run):
    result = run("export", finished_run, "--db", db, "--status", "unknown")
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "row_id,line,status,attempts,http_status,curl_error,error,latency_ms,idempotency_key,payload,excerpt"
    ]


#: Runs the CLI in a fresh interpreter, then names which of a few costly modules it imported.
LOADED = """
import sys
from engine.cli import cli
try:
    cli(sys.argv[1:], prog_name="engine")
except SystemExit:
    pass
costly = ("engine.config", "engine.ledger", "engine.run.runner", "sqlite_utils", "tqdm", "urllib.request")
print("loaded:", sorted(m for m in costly if m in sys.modules), file=sys.stderr)
"""


def _loaded(*args) -> str:
    done = subprocess.run([sys.executable, "-c", LOADED, *map(str, args)], capture_output=True, text=True, timeout=60)
    return done.stderr.splitlines()[-1]


def test_a_command_imports_only_what_it_uses(api, customers, db):
    """The mock (which the suite starts hundreds of times) and a quiet bill stay light: commands load lazily."""
    assert _loaded("mock-api", "--help") == "loaded: []"
    quiet_bill = _loaded("bill", customers(5), "--url", api.charge_url(), "--db", db, "--quiet")
    assert quiet_bill == "loaded: ['engine.config', 'engine.ledger', 'engine.run.runner', 'sqlite_utils']"
