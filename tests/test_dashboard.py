"""The dashboard's pages and actions over HTTP (Starlette's test client), on a ledger a real run
against the mock API filled."""

from __future__ import annotations

import html
import re
import time

import pytest
from conftest import run_engine, status_counts
from starlette.testclient import TestClient

from engine.dashboard.actions import Guard
from engine.dashboard.app import make_app
from engine.dashboard.figures import LIVE_EVERY, Figures
from engine.ledger import open_store
from engine.ledger.selection import RowFilter
from engine.mock.process import MockProcess

TOKEN = "s3cret-action-token"


@pytest.fixture
def api():
    with MockProcess(p503=0.25, p500=0.25, retry_after=0, seed=3) as server:
        yield server


@pytest.fixture
def ledger(api, customers, db):
    """A finished run ``f`` of 300 rows, about half failed with 503 or 500 (one attempt each)."""
    result = run_engine(
        "bill", customers(300), "--url", api.charge_url(), "--db", db, "--run-id", "f", "--max-attempts", 1
    )
    assert result.returncode == 1, result.stderr
    return db


def client(db: str, token: str | None = TOKEN) -> TestClient:
    return TestClient(make_app(db, Guard(token), page_size=10), base_url="http://127.0.0.1:8765")


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)


def test_every_page_shows_the_run(ledger):
    web = client(ledger)
    assert "f" in web.get("/").text
    run_page = web.get("/runs/f")
    assert run_page.status_code == 200 and "rerun failed" in run_page.text
    live = web.get("/runs/f/live.json").json()
    assert live["total"] == 300 and live["succeeded"] + live["failed"] == 300 and live["progress"] == 1.0
    charts = web.get("/runs/f/charts").text
    assert "<svg" in charts and re.search(r"<tr><td>1</td><td>\d{4}-\d\d-\d\d ", charts)  # pass 1, finished
    assert "running" not in charts
    failures = web.get("/runs/f/failures").text
    first_failed = re.search(r'/runs/f/rows/(cus_\d+)"', failures).group(1)
    row_page = html.unescape(web.get(f"/runs/f/rows/{first_failed}").text)
    assert re.search(rf'"id": ?"{first_failed}"', row_page)  # its payload, and its one attempt:
    assert re.search(r"<td>1</td><td>failed</td><td>50[03]</td>", row_page)
    assert web.get("/runs/nope").status_code == 404


def test_the_filter_returns_exactly_the_matching_rows_in_stable_pages(ledger):
    web = client(ledger)
    with open_store(ledger) as store:
        expected = [r["row_id"] for r in store.iter_rows("f", RowFilter(http_status=503))]
    assert len(expected) > 25  # several pages
    seen, url = [], "/runs/f/failures?http_status=503"
    for _ in range(20):
        page = web.get(url).text
        seen += re.findall(r'/runs/f/rows/(cus_\d+)"', page)
        found = re.search(r'id="next" href="([^"]+)"', page)
        if not found:
            break
        url = "/runs/f/failures" + found.group(1).replace("&amp;", "&")
    assert seen == expected  # every match once, in input order, nothing else
    none = web.get("/runs/f/failures?error=no-such-error").text
    assert "no row matches" in none


def test_no_action_without_the_token_the_csrf_token_and_this_origin(ledger):
    read_only = client(ledger, token=None)
    assert "rerun failed" not in read_only.get("/runs/f").text
    assert read_only.post("/runs/f/pause", data={"token": TOKEN}).status_code == 403
    web = client(ledger)
    csrf = csrf_of(web.get("/runs/f").text)
    assert web.post("/runs/f/pause", data={"token": "wrong", "csrf": csrf}).status_code == 403
    assert web.post("/runs/f/pause", data={"token": TOKEN}).status_code == 403  # no CSRF token
    assert web.post("/runs/f/pause", data={"token": TOKEN, "csrf": "0" * 64}).status_code == 403
    forged = web.post("/runs/f/pause", data={"token": TOKEN, "csrf": csrf}, headers={"origin": "https://evil.example"})
    assert forged.status_code == 403
    assert web.get("/runs/f/pause").status_code == 405  # a GET changes nothing
    with open_store(ledger) as store:
        assert not store.is_paused("f")


def test_pause_and_resume_from_the_page(ledger):
    web = client(ledger)
    csrf = csrf_of(web.get("/runs/f").text)
    assert web.post("/runs/f/pause", data={"token": TOKEN, "csrf": csrf}, follow_redirects=False).status_code == 303
    with open_store(ledger) as store:
        assert store.is_paused("f")
    assert web.get("/runs/f/live.json").json()["paused"] is True
    web.post("/runs/f/resume", data={"token": TOKEN, "csrf": csrf})
    with open_store(ledger) as store:
        assert not store.is_paused("f")


def test_rerun_of_the_filtered_rows_replays_exactly_them(ledger, api):
    web = client(ledger)
    with open_store(ledger) as store:
        only_503 = {r["row_id"] for r in store.iter_rows("f", RowFilter(http_status=503))}
    failed_before = status_counts(ledger, "f")["failed"]
    api.configure(p503=0.0, p500=0.0)
    page = web.get("/runs/f/failures?http_status=503").text
    answer = web.post(
        "/runs/f/rerun",
        data={"token": TOKEN, "csrf": csrf_of(page), "scope": "filtered", "http_status": "503", "status": "failed"},
    )
    assert answer.status_code == 200  # the run's page, after the redirect
    deadline = time.monotonic() + 60
    while web.get("/runs/f/live.json").json()["rerun_running"] or status_counts(ledger, "f")["failed"] == failed_before:
        assert time.monotonic() < deadline, "the rerun did not finish"
        time.sleep(0.2)
    assert status_counts(ledger, "f")["failed"] == failed_before - len(only_503)


def test_metrics_in_the_prometheus_format(ledger):
    web = client(ledger)
    text = web.get("/metrics").text
    assert re.search(r'batch_engine_rows\{run="f",status="succeeded"\} \d+', text)
    for _ in range(50):  # latency and answers are read in the background: a later scrape has them
        time.sleep(0.1)
        text = web.get("/metrics").text
        if "batch_engine_attempts_total{" in text:
            break
    assert 'batch_engine_attempts_total{outcome="503",run="f"}' in text
    assert 'batch_engine_latency_milliseconds_bucket{le="+Inf",run="f"}' in text
    assert 'batch_engine_paused{run="f"} 0.0' in text


def test_every_page_shares_one_read_of_a_run_at_most_once_a_second(ledger):
    opened = []

    def counting_ledger():
        opened.append(time.monotonic())
        return open_store(ledger, create=False)

    figures = Figures(counting_ledger)
    first = figures.live("f")
    assert all(figures.live("f") == first for _ in range(20))  # twenty pages, one read
    assert len(opened) == 1 and first["succeeded"] + first["failed"] == 300
    time.sleep(LIVE_EVERY)
    figures.live("f")
    assert len(opened) == 2


def test_every_page_reads_a_postgresql_ledger(api, customers, postgres_url):
    result = run_engine(
        "bill", customers(120), "--url", api.charge_url(), "--db", postgres_url, "--run-id", "pg", "--max-attempts", 1
    )
    assert result.returncode == 1, result.stderr
    web = client(postgres_url)
    live = web.get("/runs/pg/live.json").json()
    assert live["total"] == 120 and live["succeeded"] + live["failed"] == 120 and live["failed"] > 0
    for page in ("/", "/runs/pg", "/runs/pg/charts", "/runs/pg/failures?status=failed&http_status=503", "/metrics"):
        assert web.get(page).status_code == 200, page
    failed = re.findall(r'/runs/pg/rows/(cus_\d+)"', web.get("/runs/pg/failures").text)
    assert len(failed) == min(10, live["failed"])
    assert web.get(f"/runs/pg/rows/{failed[0]}").status_code == 200
