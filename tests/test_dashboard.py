"""The dashboard's pages and actions over HTTP (Starlette's test client, and ``python -m engine
dashboard`` in a process of its own), on a ledger a real run against the mock API filled."""

from __future__ import annotations

import html
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest
from conftest import copy_ledger, report_json, run_engine, status_counts, write_csv
from starlette.testclient import TestClient

from engine.dashboard.app import make_app
from engine.dashboard.figures import LIVE_EVERY, Figures
from engine.dashboard.guard import Guard
from engine.ledger import open_store
from engine.ledger.selection import RowFilter
from engine.mock.process import MockProcess

TOKEN = "s3cret-action-token"


@pytest.fixture
def api():
    with MockProcess(p503=0.25, p500=0.25, retry_after=0, seed=3) as server:
        yield server


@pytest.fixture(scope="module")
def seeded_api():
    """The mock API the module's finished run was billed to (its rerun goes there too)."""
    with MockProcess(p503=0.25, p500=0.25, retry_after=0, seed=3) as server:
        yield server


@pytest.fixture(scope="module")
def finished_run(seeded_api, tmp_path_factory) -> str:
    """A finished run ``f`` of 300 rows, about half failed with 503 or 500 (one attempt each), billed once
    for the module; each test gets a copy of its ledger (``ledger``)."""
    folder = tmp_path_factory.mktemp("finished_run")
    db = str(folder / "ledger.db")
    result = run_engine(
        "bill", write_csv(folder / "customers.csv", 300), "--url", seeded_api.charge_url(), "--db", db,
        "--run-id", "f", "--max-attempts", 1, "--max-failure-rate", "off",  # half of them fail on purpose
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    return db


@pytest.fixture
def ledger(finished_run, tmp_path) -> str:
    """A ledger of this test's own holding the finished run ``f``."""
    return copy_ledger(finished_run, tmp_path)


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


def test_the_run_page_and_report_give_the_same_figures(ledger, run):
    """One summary feeds both: on a finished run the page's live figures are the report's."""
    web, deadline = client(ledger), time.monotonic() + 10
    live = web.get("/runs/f/live.json").json()
    while live["attempts"] is None and time.monotonic() < deadline:  # details are read in the background
        time.sleep(0.1)
        live = web.get("/runs/f/live.json").json()
    summary = report_json(run, ledger, "f")
    shared = ("total", "succeeded", "failed", "rejected", "unknown", "key_conflict", "pending", "done", "progress")
    assert [live[key] for key in shared] == [summary[key] for key in shared]
    assert (live["elapsed_s"], live["attempts"], live["latency_ms"]) == (
        summary["elapsed_s"],
        summary["attempts"],
        summary["latency_ms"],
    )
    assert summary["attempts"] == 300 and summary["elapsed_s"] > 0


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
        assert [(a["who"], a["action"], a["outcome"]) for a in store.audit("f")] == [("token", "pause", "done")]
    assert web.get("/runs/f/live.json").json()["paused"] is True
    web.post("/runs/f/resume", data={"token": TOKEN, "csrf": csrf})
    with open_store(ledger) as store:
        assert not store.is_paused("f")


def test_rerun_of_the_filtered_rows_replays_exactly_them(ledger, seeded_api):
    web = client(ledger)
    with open_store(ledger) as store:
        only_503 = {r["row_id"] for r in store.iter_rows("f", RowFilter(http_status=503))}
    failed_before = status_counts(ledger, "f")["failed"]
    seeded_api.configure(p503=0.0, p500=0.0)
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


# -- over real HTTP: the dashboard in its own process, reruns in theirs -----------------------


@contextmanager
def serving(db: str, *args: str, **environ: str | None):
    """``python -m engine dashboard --allow-actions ARGS`` for ``db`` on a free port, with ``environ``
    changed (None: unset); an HTTP client on it, and the process (its stderr)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "ENGINE_DASHBOARD_TOKEN": TOKEN, **{k: v for k, v in environ.items() if v is not None}}
    for name in [k for k, v in environ.items() if v is None]:
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "dashboard", "--db", db, "--port", str(port), "--allow-actions", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as web:
            deadline = time.monotonic() + 20
            while True:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                try:
                    web.get("/")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the dashboard did not answer"
                    time.sleep(0.2)
            yield web, process
    finally:
        process.terminate()
        process.wait(10)


def rerun_form(page: str) -> list[tuple[str, str]]:
    """The hidden fields of the page's "rerun exactly these" form, as the browser would post them."""
    form = re.search(r'<form method="post" action="/runs/[^"]+/rerun".*?</form>', page, re.S).group(0)
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
    return [(name, html.unescape(value)) for name, value in fields]


def as_form(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


def finished_rerun(web: httpx.Client, run_id: str, limit: float = 60) -> dict:
    """The outcome of the rerun the dashboard started, once it has ended."""
    deadline = time.monotonic() + limit
    while True:
        rerun = web.get(f"/runs/{run_id}/live.json").json().get("rerun")
        if rerun and not rerun["running"]:
            return rerun
        assert time.monotonic() < deadline, f"the rerun did not finish: {rerun}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def unknown_run(tmp_path_factory):
    """A ``--no-idempotency`` run ``u`` of 60 rows: the mock API charged every one, but dropped the
    connection of several before answering (``unknown``); its ledger, billed once for the module, and
    the API, still running."""
    folder = tmp_path_factory.mktemp("unknown_run")
    db = str(folder / "ledger.db")
    with MockProcess(p_drop_after=0.15, seed=5) as server:
        result = run_engine(
            "bill", write_csv(folder / "customers.csv", 60), "--url", server.charge_url(), "--db", db,
            "--run-id", "u", "--no-idempotency", "--max-attempts", 1, "--quiet",
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert status_counts(db, "u")["unknown"] >= 3
        server.configure(p_drop_after=0.0)
        yield db, server


@pytest.fixture
def unknowns(unknown_run, tmp_path, db):
    """The run ``u`` in this test's own copy of its ledger (at ``db``); the API it was billed to. The
    tests that share that API send it nothing but the one row the rerun button test sends."""
    template, server = unknown_run
    assert copy_ledger(template, tmp_path) == db
    return server


def test_the_rerun_button_sends_exactly_the_one_unknown_row_the_page_shows_and_only_when_ticked(db, unknowns):
    with open_store(db) as store:
        unknown = [r["row_id"] for r in store.iter_rows("u", RowFilter(states=("unknown",)))]
    chosen = unknown[1]
    requests = unknowns.stats()["requests"]
    with serving(db) as (web, _):
        page = web.get(f"/runs/u/failures?status=unknown&row_id={chosen}").text
        assert re.findall(r'/runs/u/rows/(cus_\d+)"', page) == [chosen]  # the page shows one row
        assert re.search(r"1 row matches .*sends <b>0</b>", page)
        assert re.search(
            r'name="include_unknown" value="1" data-count="1">\s*also resend the 1 unknown row: .*twice', page
        )
        form = [*rerun_form(page), ("token", TOKEN)]

        answer = web.post("/runs/u/rerun", data=as_form(form))  # the page's own values, the box not ticked
        assert answer.status_code == 303, answer.text
        untouched = finished_rerun(web, "u")
        assert unknowns.stats()["requests"] == requests  # nothing unknown is sent
        assert status_counts(db, "u")["unknown"] == len(unknown)

        answer = web.post("/runs/u/rerun", data=as_form([*form, ("include_unknown", "1")]))  # ticked
        assert answer.status_code == 303, answer.text
        outcome = finished_rerun(web, "u")
        stats = unknowns.stats()
        assert stats["requests"] == requests + 1  # exactly that row
        assert stats["double_charged_sample"] == [chosen] and stats["customers_charged_more_than_once"] == 1
        assert status_counts(db, "u")["unknown"] == len(unknown) - 1
        # the run page shows how it ended and its last lines
        run_page = html.unescape(web.get("/runs/u").text)
        assert f"exit code {outcome['exit_code']}" in run_page and outcome["exit_code"] == 1  # others still unknown
        assert any("run u" in line for line in outcome["output"]) and outcome["output"][-1] in run_page
        assert untouched["exit_code"] == 1 and any("unknown" in line for line in untouched["output"])


@pytest.mark.parametrize(
    "query, named",
    [("http_status=5xx", "http_status"), ("status=bogus", "bogus"), ("http-status=503", "http-status")],
)
def test_an_invalid_filter_is_refused_with_400_on_the_page_and_the_action_and_nothing_is_sent(
    db, unknowns, query, named
):
    requests = unknowns.stats()["requests"]
    with serving(db) as (web, _):
        refused = web.get(f"/runs/u/failures?status=failed&{query}")
        assert refused.status_code == 400 and named in refused.text
        form = rerun_form(web.get("/runs/u/failures?status=unknown").text)
        name, value = query.split("=")
        answer = web.post(
            "/runs/u/rerun", data=as_form([*form, (name, value), ("include_unknown", "1"), ("token", TOKEN)])
        )
        assert answer.status_code == 400 and named in answer.text
        time.sleep(1)
        assert web.get("/runs/u/live.json").json().get("rerun") is None  # no rerun was started
    assert unknowns.stats()["requests"] == requests


def test_a_missing_secret_variable_is_said_at_start_up_and_disables_the_rerun_button(api, customers, db, monkeypatch):
    monkeypatch.setenv("BILLING_TOKEN", "billing-secret")
    result = run_engine(
        "bill", customers(5), "--url", api.charge_url(), "--db", db, "--run-id", "s",
        "--header", "Authorization: Bearer ${BILLING_TOKEN}",
        "--max-attempts", 30, "--backoff-base", 0.01, "--backoff-cap", 0.05,  # half the answers fail at random
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with serving(db, BILLING_TOKEN=None) as (web, process):
        run_page = web.get("/runs/s").text
        failures = web.get("/runs/s/failures").text
        csrf = csrf_of(run_page)
        refused = web.post("/runs/s/rerun", data={"token": TOKEN, "csrf": csrf, "scope": "all"})
        process.terminate()
        startup = process.stderr.read()
    warnings = [line for line in startup.splitlines() if "BILLING_TOKEN" in line]
    assert len(warnings) == 1 and "runs s" in warnings[0]
    for page in (run_page, failures):
        button = re.search(r'<button id="rerun-(failed|filtered)"[^>]*>', page).group(0)
        assert "disabled" in button and "BILLING_TOKEN" in html.unescape(button)
    assert refused.status_code == 409 and "BILLING_TOKEN" in refused.text
    with open_store(db) as store:  # the refused rerun is in the audit log, with its reason
        (audit,) = store.audit("s")
    assert (audit["action"], audit["rows"]) == ("rerun", "every row not yet succeeded")
    assert audit["outcome"].startswith("refused: rerun disabled") and "BILLING_TOKEN" in audit["outcome"]
