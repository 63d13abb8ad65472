"""A plain ``pip install .`` (no extras) bills on SQLite with the local pool; asking for a wing whose
packages are missing is one line naming the extra (exit 2). The extras' packages are hidden from a
``python -c`` that then runs the CLI, as if they had never been installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.extras import CLUSTER, DASHBOARD, POSTGRES, Wing

#: Runs the CLI with every optional wing's packages unimportable, then names the wings' modules it loaded.
WITHOUT_EXTRAS = f"""
import sys
for name in {sorted(POSTGRES.packages | CLUSTER.packages | DASHBOARD.packages)!r}:
    sys.modules[name] = None  # "import name" now fails as if it were not installed
from engine.cli import cli
try:
    cli(sys.argv[1:], prog_name="engine")
finally:
    wings = ("engine.ledger.postgres", "engine.cluster", "engine.dashboard")
    print("wings loaded:", sorted(m for m in sys.modules if m.startswith(wings)), file=sys.stderr)
"""


def without_extras(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITHOUT_EXTRAS, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_bill_on_sqlite_needs_no_extra(api, customers, db):
    result = without_extras("bill", customers(50), "--url", api.charge_url(), "--db", db, "--run-id", "base")
    assert result.returncode == 0, result.stderr
    assert "wings loaded: []" in result.stderr
    report = without_extras("report", "base", "--db", db, "--format", "json")
    assert report.returncode == 0 and '"succeeded": 50' in report.stdout, report.stderr


@pytest.mark.parametrize(
    ("wing", "args"),
    [
        (POSTGRES, ("bill", "in.csv", "--url", "http://127.0.0.1:9/x", "--db", "postgresql://127.0.0.1/none")),
        (POSTGRES, ("report", "r", "--db", "postgres://127.0.0.1/none")),
        (CLUSTER, ("bill", "in.csv", "--url", "http://127.0.0.1:9/x", "--broker", "redis://127.0.0.1:9/0")),
        (CLUSTER, ("worker", "--broker", "redis://127.0.0.1:9/0")),
        (DASHBOARD, ("dashboard", "--port", "9")),
    ],
)
def test_a_missing_wing_is_one_line_naming_its_extra(wing: Wing, args, tmp_path):
    (tmp_path / "in.csv").write_text("id,amount\ncus_1,5\n")
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    said = [line for line in result.stderr.splitlines() if not line.startswith("wings loaded:")]
    assert result.returncode == 2
    assert said == [f"error: {wing.name} needs: pip install 'batch-engine[{wing.extra}]'"]


def test_the_line_names_the_package_and_the_extra():
    assert POSTGRES.missing() == "the PostgreSQL ledger needs: pip install 'batch-engine[postgres]'"
