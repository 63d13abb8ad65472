"""Every read command in every format, on both ledgers: the figures a store returns are plain
ints and floats (PostgreSQL's sums are ``Decimal``, which JSON cannot write)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from engine.ledger import open_store
from engine.mock.process import MockProcess


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, db):
    return db if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def finished(ledger, customers, run):
    with MockProcess(p500=0.2, seed=11) as api:
        result = run(
            "bill", customers(60), "--url", api.charge_url(), "--db", ledger, "--run-id", "read",
            "--max-attempts", 1, "--quiet",
        )  # fmt: skip
    assert result.exit_code == 1, result.output
    with open_store(ledger) as store:  # as if worker nodes had sent it: the report sums its chunks
        (chunk, *_) = store.plan_chunks("read", 1, ("succeeded", "failed"), 20)
        store.claim_chunk(chunk, "node-1", max_deliveries=5)
    return ledger


def test_report_in_every_format(finished, run):
    as_json = run("report", "read", "--db", finished, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.output)
    assert summary["total"] == 60 and summary["succeeded"] + summary["failed"] == 60 and summary["failed"] > 3
    assert isinstance(summary["elapsed_s"], float) and isinstance(summary["attempts"], int)
    assert summary["chunks"] == {"chunks": 3, "dead": 0, "resent": 0, "refused": 0}
    text = run("report", "read", "--db", finished)
    assert text.exit_code == 0 and f"{summary['succeeded']} succeeded" in text.output, text.output
    as_csv = run("report", "read", "--db", finished, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    (row,) = csv.DictReader(io.StringIO(as_csv.output))
    assert int(row["failed"]) == summary["failed"] and float(row["elapsed_s"]) == summary["elapsed_s"]


def test_status_and_export_in_every_format(finished, run):
    status = run("status", "--db", finished)
    assert status.exit_code == 0 and "read" in status.output, status.output
    as_csv = run("export", "read", "--db", finished, "--status", "failed", "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    failed = list(csv.DictReader(io.StringIO(as_csv.output)))
    lines = run("export", "read", "--db", finished, "--status", "failed", "--format", "jsonl")
    assert lines.exit_code == 0, lines.output
    rows = [json.loads(line) for line in lines.output.splitlines()]
    assert len(rows) == len(failed) > 3
    assert all(row["http_status"] == 500 and isinstance(row["latency_ms"], float | None) for row in rows)
