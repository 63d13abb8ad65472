"""``--capture NAME=JSONPATH``: values of each 2xx JSON answer kept per row, on both ledgers and through
nodes, shown by ``export``, ``report`` and the dashboard; a capture missing from an answer is recorded as
missing, never as an error of the row."""

from __future__ import annotations

import csv
import io
import json

import orjson
import pytest
from conftest import bill_args, ledger_rows, report_json, run_engine, status_counts
from test_cluster import nodes  # noqa: F401 (the nodes fixture)

from engine.delivery.extract import CAPTURE_BODY_BYTES, NO_MATCH, NOT_JSON, TOO_LARGE, Extractor, parse_capture
from engine.errors import UsageError
from engine.mock.process import MockProcess

CHARGE_ID = ("--capture", "charge_id=$.id")


def _export(run, db: str, run_id: str, fmt: str = "csv") -> str:
    result = run("export", run_id, "--db", db, "--status", "succeeded", "--format", fmt)
    assert result.exit_code == 0, result.output
    return result.output


def test_capture_puts_every_charge_id_in_the_export_and_the_report(customers, any_db, run):
    rows = 60
    with MockProcess() as api:
        billed = run(
            "bill", customers(rows), "--url", api.charge_url(), "--db", any_db, "--run-id", "cap",
            *CHARGE_ID, "--capture", "status=$.status",
        )  # fmt: skip
        assert billed.exit_code == 0, billed.output
        assert api.stats()["charges"] == rows
    exported = list(csv.DictReader(io.StringIO(_export(run, any_db, "cap"))))
    ids = [row["charge_id"] for row in exported]
    assert len(exported) == rows and all(i.startswith("ch_") for i in ids) and len(set(ids)) == rows
    assert {row["captured_status"] for row in exported} == {""}  # "status" is a column: its capture is prefixed
    lines = [json.loads(line) for line in _export(run, any_db, "cap", "jsonl").splitlines()]
    assert sorted(line["captured"]["charge_id"] for line in lines) == sorted(ids)
    assert all(line["captured"]["status"] is None for line in lines)  # missing: null, the row still succeeded
    assert status_counts(any_db, "cap") == {"succeeded": rows}
    summary = report_json(run, any_db, "cap")
    assert summary["captured"] == {"charge_id": rows, "status": 0} and summary["replays"] == 0
    assert "rows with a value: charge_id 60, status 0" in run("report", "cap", "--db", any_db).output
    stored = orjson.loads(ledger_rows(any_db, "SELECT captured FROM requests WHERE row_id = 'cus_1'")[0][0])
    assert stored["missing"] == {"status": NO_MATCH} and stored["values"]["charge_id"].startswith("ch_")


def test_captures_are_stored_with_the_run_so_a_rerun_captures_too(customers, db, run):
    """Every first request is refused (400): nothing captured; ``rerun`` sends them with the stored --capture."""
    with MockProcess(refuse_first=400) as api:
        billed = run("bill", customers(20), "--url", api.charge_url(), "--db", db, "--run-id", "again", *CHARGE_ID)
        assert billed.exit_code == 1 and status_counts(db, "again") == {"rejected": 20}
        assert ledger_rows(db, "SELECT count(*) FROM requests WHERE captured IS NOT NULL") == [(0,)]
        again = run("rerun", "again", "--db", db, "--include-rejected")
        assert again.exit_code == 0, again.output
    exported = list(csv.DictReader(io.StringIO(_export(run, db, "again"))))
    assert len(exported) == 20 and all(row["charge_id"].startswith("ch_") for row in exported)


def test_an_answer_over_the_bound_is_recorded_as_missing_not_as_an_error(customers, db, run):
    with MockProcess(body_bytes=CAPTURE_BODY_BYTES + 1000) as api:
        billed = run("bill", customers(10), "--url", api.charge_url(), "--db", db, "--run-id", "big", *CHARGE_ID)
    assert billed.exit_code == 0, billed.output
    assert status_counts(db, "big") == {"succeeded": 10}
    (captured,) = {row[0] for row in ledger_rows(db, "SELECT captured FROM requests")}
    assert orjson.loads(captured) == {"values": {}, "missing": {"charge_id": TOO_LARGE}}
    assert report_json(run, db, "big")["captured"] == {"charge_id": 0}


def test_a_run_without_captures_keeps_only_the_excerpt(customers, db, run):
    with MockProcess() as api:
        assert run("bill", customers(5), "--url", api.charge_url(), "--db", db, "--run-id", "plain").exit_code == 0
    assert ledger_rows(db, "SELECT count(*) FROM requests WHERE captured IS NOT NULL") == [(0,)]
    header = _export(run, db, "plain").splitlines()[0]
    assert "charge_id" not in header and "captured" not in header
    assert "captured" not in json.loads(_export(run, db, "plain", "jsonl").splitlines()[0])
    assert report_json(run, db, "plain")["captured"] == {}


@pytest.mark.parametrize(
    "text", ["charge_id", "=$.id", "charge id=$.id", "charge_id=", "charge_id=$[", "charge_id=$.id?"]
)
def test_a_malformed_capture_is_refused_before_anything_is_sent(text, customers, db, run):
    with pytest.raises(UsageError):
        parse_capture(text)
    with MockProcess() as api:
        result = run("bill", customers(3), "--url", api.charge_url(), "--db", db, "--capture", text)
        assert result.exit_code == 2 and "--capture" in result.output
        assert api.stats()["requests"] == 0


def test_a_name_given_twice_is_refused(customers, db, run):
    result = run("bill", customers(3), "--url", "http://127.0.0.1:9/x", "--db", db, *CHARGE_ID, *CHARGE_ID)
    assert result.exit_code == 2 and "given twice" in result.output


def test_the_extractor_keeps_one_value_or_a_list_and_says_why_one_is_missing():
    extract = Extractor(["id=$.id", "items=$.lines[*].sku", "first=$.lines[0].sku", "gone=$.nope"]).extract
    answer = orjson.loads(extract(b'{"id": "ch_1", "lines": [{"sku": "a"}, {"sku": "b"}]}'))
    assert answer == {"values": {"id": "ch_1", "items": ["a", "b"], "first": "a"}, "missing": {"gone": NO_MATCH}}
    assert orjson.loads(extract(b"<html>")) == {
        "values": {},
        "missing": dict.fromkeys(["id", "items", "first", "gone"], NOT_JSON),
    }
    assert orjson.loads(extract(b'"ch_1"'))["missing"]["id"] == NO_MATCH  # JSON, but not an object
    assert not Extractor([])


def test_the_dashboard_row_page_shows_what_was_captured(customers, db, run):
    from starlette.testclient import TestClient

    from engine.dashboard.app import make_app
    from engine.dashboard.guard import Guard

    with MockProcess() as api:
        assert (
            run("bill", customers(3), "--url", api.charge_url(), "--db", db, "--run-id", "d", *CHARGE_ID).exit_code == 0
        )
    web = TestClient(make_app(db, Guard("t0ken")), base_url="http://127.0.0.1:8765")
    page = web.get("/runs/d/rows/cus_1").text
    assert "Captured" in page and "ch_" in page


def test_worker_nodes_capture_from_the_runs_stored_settings(customers, postgres_url, broker, nodes):  # noqa: F811
    nodes(1)
    with MockProcess() as api:
        result = run_engine(
            *bill_args(customers(150), api, postgres_url, "nodes", broker=broker), *CHARGE_ID, timeout=120
        )
        assert result.returncode == 0, result.stderr
    found = ledger_rows(postgres_url, "SELECT captured FROM requests WHERE run_id = 'nodes'")
    ids = {orjson.loads(captured)["values"]["charge_id"] for (captured,) in found}
    assert len(ids) == 150 and all(i.startswith("ch_") for i in ids)


def test_a_captured_secret_is_redacted_like_an_excerpt(customers, db, run):
    """An API that quotes the request's headers back: the token never reaches the ledger through a capture."""
    token = "sk_live_capture_secret_123456"
    with MockProcess(echo_headers=True) as api:
        billed = run(
            "bill", customers(3), "--url", api.charge_url(), "--db", db, "--run-id", "s",
            "--header", "Authorization: Bearer ${API_TOKEN}", "--capture", "auth=$.headers.authorization",
            env={"API_TOKEN": token},
        )  # fmt: skip
        assert billed.exit_code == 0, billed.output
    captured = [row[0] for row in ledger_rows(db, "SELECT captured FROM requests")]
    assert len(captured) == 3 and all(token not in text for text in captured), captured
    assert all(orjson.loads(text)["values"]["auth"] == "Bearer [redacted]" for text in captured), captured
