"""The dashboard as an attacker would try it, over real HTTP against ``python -m engine dashboard``
in a process of its own: Host, headers, hostile input, logins, roles, and a real nginx in front."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import ENGINE, copy_ledger, run_engine, write_csv
from test_dashboard import TOKEN
from test_dashboard import serving as dashboard_process

from engine.ledger import open_store
from engine.mock.process import MockProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import start_nginx  # noqa: E402

OPERATOR_PASSWORD = "operator-password-0123"
VIEWER_PASSWORD = "viewer-password-456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(db: str, *args: str, token: str | None = TOKEN):
    """``python -m engine dashboard --allow-actions ARGS`` on a free port (``token``: the one in
    ``ENGINE_DASHBOARD_TOKEN``, None: none); a client on it."""
    with dashboard_process(db, *args, ENGINE_DASHBOARD_TOKEN=token) as (web, _):
        yield web


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> str:
    """A finished run ``f`` of 20 rows, some failed with 503, billed once for the module."""
    folder = tmp_path_factory.mktemp("finished_run")
    db = str(folder / "ledger.db")
    with MockProcess(p503=0.4, retry_after=0, seed=3) as api:
        result = run_engine(
            "bill", write_csv(folder / "customers.csv", 20), "--url", api.charge_url(), "--db", db,
            "--run-id", "f", "--max-attempts", 1,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    return db


@pytest.fixture
def ledger(finished_run, tmp_path) -> str:
    """A ledger of this test's own holding the finished run ``f``."""
    return copy_ledger(finished_run, tmp_path)


@pytest.fixture
def users(tmp_path) -> str:
    """A users file with the operator ``olga`` and the viewer ``vic``, made by ``dashboard-user add``."""
    path = str(tmp_path / "users.txt")
    for name, role, password in (("olga", "operator", OPERATOR_PASSWORD), ("vic", "viewer", VIEWER_PASSWORD)):
        made = user_command("add", name, "--role", role, "--users", path, password=password)
        assert made.returncode == 0, made.stderr
    assert os.stat(path).st_mode & 0o077 == 0  # private
    assert OPERATOR_PASSWORD not in open(path).read()
    return path


def user_command(*args: str, password: str = "") -> subprocess.CompletedProcess:
    """``python -m engine dashboard-user ARGS``, the password on its stdin (never an argument)."""
    return subprocess.run(
        [*ENGINE, "dashboard-user", *args], input=password + "\n", capture_output=True, text=True, timeout=60
    )


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)


def log_in(web: httpx.Client, name: str, password: str) -> httpx.Response:
    return web.post("/login", data={"name": name, "password": password, "next": "/runs/f"})


def test_another_host_is_refused_and_every_answer_forbids_framing_and_sniffing(ledger):
    with serving(ledger) as web:
        assert web.get("/", headers={"host": "evil.example"}).status_code == 400
        assert web.get("/runs/f", headers={"host": "evil.example:8765"}).status_code == 400
        for path in ("/", "/runs/f", "/runs/f/failures", "/runs/f/live.json", "/static/dashboard.js", "/nope"):
            answer = web.get(path)
            assert answer.status_code in (200, 404), path
            csp = answer.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "script-src 'self'" in csp
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "same-origin"
            assert answer.headers["cache-control"] == "no-store"
        page = web.get("/runs/f").text
        assert "<script>" not in page and "style=" not in page and " on" + "click=" not in page  # nothing inline


@pytest.mark.parametrize(
    "query, named",
    [
        ("http_status=9223372036854775808", "http_status"),
        ("curl_error=18446744073709551616", "curl_error"),
        ("after=9223372036854775808", "after"),
        ("after=%C2%B2", "after"),
        ("error=" + "x" * 201, "error"),
        ("error=a%00b", "NUL"),
        ("row_id=a%00b", "NUL"),
        ("status=bogus", "bogus"),
        ("status=failed&" + "&".join(f"row_id={n}" for n in range(101)), "100"),
    ],
)
def test_hostile_filter_values_get_a_400_naming_them(ledger, query, named):
    with serving(ledger) as web:
        refused = web.get(f"/runs/f/failures?{query}")
        assert refused.status_code == 400 and named in refused.text
        form = {"csrf": csrf_of(web.get("/runs/f").text), "token": TOKEN, "scope": "filtered"}
        name, value = query.split("&")[0].split("=")
        if name != "after":
            pairs = [*form.items(), *httpx.QueryParams(query).multi_items()]
            answer = web.post("/runs/f/rerun", content=str(httpx.QueryParams(pairs)), headers=FORM)
            assert answer.status_code == 400 and named in answer.text
        assert web.get("/runs/f/rows/a%00b").status_code == 400
        assert web.get("/runs/f/live.json").json().get("rerun") is None  # nothing was started


FORM = {"content-type": "application/x-www-form-urlencoded"}


def test_a_non_ascii_or_forged_csrf_value_is_refused_with_403(ledger):
    with serving(ledger) as web:
        for csrf in ("é" * 64, "\u2603", "0" * 64, ""):
            body = str(httpx.QueryParams({"csrf": csrf, "token": TOKEN}))
            assert web.post("/runs/f/pause", content=body, headers=FORM).status_code == 403
        raw = b"csrf=%FF%FE&token=" + TOKEN.encode()  # not even UTF-8
        assert web.post("/runs/f/pause", content=raw, headers=FORM).status_code in (400, 403)
    with open_store(ledger) as store:
        assert not store.is_paused("f")


def test_listening_beyond_this_machine_needs_a_login_and_a_long_secret(ledger, users):
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_DASHBOARD_TOKEN"}
    refused = subprocess.run(
        [sys.executable, "-m", "engine", "dashboard", "--db", ledger, "--host", "0.0.0.0"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--host 0.0.0.0 needs a login" in refused.stderr
    short = subprocess.run(
        [sys.executable, "-m", "engine", "dashboard", "--db", ledger, "--allow-actions"],
        env={**env, "ENGINE_DASHBOARD_TOKEN": "too-short"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert short.returncode == 2 and "at least 16" in short.stderr
    weak = user_command("add", "eve", "--users", users, password="short")
    assert weak.returncode == 2 and "at least 16" in weak.stderr
    listed = run_engine("dashboard-user", "list", "--users", users)
    assert listed.stdout.split() == ["olga", "operator", "vic", "viewer"]


def test_a_scraper_reads_metrics_with_the_token_as_a_bearer(ledger):
    with serving(ledger, "--login") as web:
        assert web.get("/metrics").status_code == 401
        assert web.get("/metrics", headers={"authorization": "Bearer not-the-token-at-all"}).status_code == 401
        scraped = web.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert scraped.status_code == 200 and 'batch_engine_rows{run="f"' in scraped.text


def test_logins_roles_sessions_and_the_throttle_on_wrong_passwords(ledger, users):
    with serving(ledger, "--users", users, "--login", token=None) as web:
        first = web.get("/runs/f", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"].startswith("/login")
        assert web.get("/runs/f/live.json").status_code == 401 and web.get("/metrics").status_code == 401
        # an operator acts
        logged_in = log_in(web, "olga", OPERATOR_PASSWORD)
        assert logged_in.status_code == 303 and logged_in.headers["location"] == "/runs/f"
        cookie = logged_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=" in cookie
        assert "secure" not in cookie  # plain HTTP on 127.0.0.1: a Secure cookie would never come back
        page = web.get("/runs/f").text
        assert "olga (operator)" in page and 'id="pause"' in page and 'name="token"' not in page
        csrf = csrf_of(page)
        assert web.post("/runs/f/pause", data={"csrf": csrf}, follow_redirects=False).status_code == 303
        with open_store(ledger) as store:
            assert store.is_paused("f")
        web.post("/logout")
        web.cookies.clear()
        # a viewer reads, but cannot act, even with a valid form
        assert log_in(web, "vic", VIEWER_PASSWORD).status_code == 303
        page = web.get("/runs/f").text
        assert "vic (viewer)" in page and 'id="resume"' not in page
        refused = web.post("/runs/f/resume", data={"csrf": csrf})
        assert refused.status_code == 403 and "viewer" in refused.text
        audit = re.search(r'<table id="audit">.*?</table>', web.get("/runs/f").text, re.S).group(0)
        assert re.search(r"<td>olga</td><td>pause</td><td>the whole run</td><td>done</td>", audit)
        assert "resume" not in audit  # refused before it was taken: no row (anyone could fill the log)
        with open_store(ledger) as store:
            assert store.is_paused("f")
        web.post("/logout")
        web.cookies.clear()
        # wrong passwords: five a minute, then even the right one waits
        for _ in range(5):
            assert log_in(web, "olga", "wrong-password-0000000").status_code == 401
        assert log_in(web, "olga", OPERATOR_PASSWORD).status_code == 429
        assert log_in(web, "vic", VIEWER_PASSWORD).status_code == 429  # the same address
        web.cookies.set("engine_session", "olga.9999999999." + "0" * 64)
        assert web.get("/runs/f", follow_redirects=False).status_code == 303  # a forged session is no login


def test_a_new_run_id_must_be_shell_safe(customers, db):
    for bad in ("a b", "x;rm -rf", "é", "a" * 101, "$(id)"):
        refused = run_engine("bill", customers(1), "--url", "http://127.0.0.1:9/x", "--db", db, "--run-id", bad)
        assert refused.returncode == 2 and "run id" in refused.stderr, bad
    with open_store(db) as store:
        assert store.run_ids() == []


@pytest.mark.skipif(not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")), reason="no nginx")
def test_actions_work_behind_a_default_nginx_under_a_path(ledger, tmp_path):
    port = free_port()
    proxy = f"location /engine/ {{ proxy_pass http://127.0.0.1:{port}/; }}"
    nginx, nginx_port = start_nginx(str(tmp_path), extra=proxy)
    env = {**os.environ, "ENGINE_DASHBOARD_TOKEN": TOKEN}
    command = [sys.executable, "-m", "engine", "dashboard", "--db", ledger, "--port", str(port), "--allow-actions"]
    dashboard = subprocess.Popen(
        [*command, "--root-path", "/engine", "--trusted-proxy", "127.0.0.1"], env=env, stderr=subprocess.PIPE
    )
    try:
        base = f"http://127.0.0.1:{nginx_port}"
        with httpx.Client(base_url=base, timeout=10) as web:
            for _ in range(100):
                if web.get("/engine/runs/f").status_code == 200:
                    break
                time.sleep(0.2)
            page = web.get("/engine/runs/f").text
            assert 'href="/engine/runs/f/failures"' in page and 'action="/engine/runs/f/pause"' in page
            headers = {"origin": base}  # as a browser sends it
            done = web.post(
                "/engine/runs/f/pause", data={"csrf": csrf_of(page), "token": TOKEN}, headers=headers,
                follow_redirects=False,
            )  # fmt: skip
            assert done.status_code == 303 and done.headers["location"] == "/engine/runs/f"
        with open_store(ledger) as store:
            assert store.is_paused("f")
    finally:
        dashboard.terminate()
        dashboard.wait(10)
        nginx.terminate()
        nginx.wait(10)


def test_on_postgresql_a_nul_byte_is_a_400_and_actions_are_audited(customers, postgres_url):
    """PostgreSQL refuses a NUL byte in any text: the filter codec refuses it first."""
    from starlette.testclient import TestClient

    from engine.dashboard.app import make_app
    from engine.dashboard.guard import Guard

    with MockProcess(seed=3) as api:
        result = run_engine("bill", customers(5), "--url", api.charge_url(), "--db", postgres_url, "--run-id", "pg")
    assert result.returncode == 0, result.stderr
    web = TestClient(make_app(postgres_url, Guard(TOKEN)), base_url="http://127.0.0.1:8765")
    for path in ("/runs/pg/failures?error=a%00b", "/runs/pg/failures?row_id=%00", "/runs/pg/rows/a%00", "/runs/a%00"):
        refused = web.get(path)
        assert refused.status_code == 400 and "NUL" in refused.text, path
    csrf = csrf_of(web.get("/runs/pg").text)
    assert web.post("/runs/pg/pause", data={"csrf": csrf, "token": TOKEN}, follow_redirects=False).status_code == 303
    with open_store(postgres_url) as store:
        assert [(a["who"], a["action"], a["outcome"]) for a in store.audit("pg")] == [("token", "pause", "done")]
    assert re.search(r"<td>token</td><td>pause</td><td>the whole run</td><td>done</td>", web.get("/runs/pg").text)


@pytest.mark.parametrize("trusted", [True, False])
def test_the_cookie_is_secure_when_a_trusted_proxy_says_https_and_only_then(ledger, trusted):
    args = ["--login", *(["--trusted-proxy", "127.0.0.1"] if trusted else [])]
    with serving(ledger, *args) as web:
        said_https = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"}
        answer = web.post("/login", data={"name": "x", "password": TOKEN}, headers=said_https)
        assert answer.status_code == 303
        assert ("; secure" in answer.headers["set-cookie"].lower()) is trusted
        assert answer.headers["location"] == "/"
