"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, during a live
``bill`` against the mock API on 127.0.0.1, with the dashboard in its own process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import status_counts
from playwright.sync_api import expect, sync_playwright

from engine.mock.process import MockProcess

CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-test-token"
ROWS = 1500
#: Where to copy the screenshot as well (the README's docs/dashboard.png is made this way).
COPY_SCREENSHOT_TO = os.environ.get("DASHBOARD_SCREENSHOT")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dashboard(db):
    """``python -m engine dashboard --allow-actions`` on 127.0.0.1; its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "dashboard", "--db", db, "--port", str(port), "--allow-actions"],
        env={**os.environ, "ENGINE_DASHBOARD_TOKEN": TOKEN},
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def _wait_until_serving(base: str, process: subprocess.Popen, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else "the dashboard exited"
        try:
            with urllib.request.urlopen(f"{base}/", timeout=2):
                return
        except urllib.error.HTTPError:  # serving (503 until bill creates the ledger)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the dashboard did not answer at {base} within {limit:g} s")


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Debian chromium (.ci/run installs the package chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def test_an_operator_watches_a_live_run_filters_its_failures_and_reruns_one_group_of_them(
    customers, db, dashboard, browser, start_engine, tmp_path
):
    with MockProcess(latency=0.1, p500=0.1, seed=11, lock_keys=False) as api:
        bill = start_engine(
            "bill", customers(ROWS), "--url", api.charge_url(), "--db", db, "--run-id", "live",
            "--max-attempts", 1, "--concurrency", 10, "--quiet",
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        _open_when_the_run_exists(page, f"{dashboard}/runs/live", bill)

        first = int(page.locator("#succeeded").inner_text())
        # the page refreshes itself: the count grows while bill runs, without a reload
        page.wait_for_function(
            "n => Number(document.getElementById('succeeded').textContent) > n + 100", arg=first, timeout=20_000
        )
        assert bill.wait(120) == 1, bill.stderr.read() if bill.stderr else ""  # some rows failed (500)
        failed = status_counts(db, "live")["failed"]
        assert failed > 0
        expect(page.locator("#failed")).to_have_text(str(failed), timeout=5_000)

        page.click("a[href$='/failures']")
        page.fill("input[name=http_status]", "500")
        page.click("#filter button")
        shown = page.locator("#rows tr td:nth-child(5)")  # the HTTP column of each row shown
        expect(shown.first).to_have_text("500")
        assert set(shown.all_inner_texts()) == {"500"} and shown.count() == min(failed, 50)

        # failures by cause: one group (failed, HTTP 500, in the 5xx colour), rerun through its filter
        page.click("#causes-link")
        group = page.locator("#causes tr.cause")
        expect(group).to_have_count(1)
        expect(group.locator("td.rows")).to_have_text(str(failed))
        assert group.locator("td.s5xx-text").inner_text() == "500"
        group.locator("a.rerun-group").click()
        api.configure(p500=0.0)
        # "rerun exactly these": the rows this group's filter shows, after a confirm that says how many
        expect(page.locator("#rerun-count")).to_contain_text(f"sends {failed} of them")
        asked: list[str] = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
        page.fill("#rerun-form input[name=token]", TOKEN)
        page.click("#rerun-filtered")
        expect(page.locator("#rerun-outcome")).to_have_text("exit code 0", timeout=60_000)
        assert asked == [f"Send {failed} rows of live again?"]
        expect(page.locator("#failed")).to_have_text("0")
        expect(page.locator("#rerun-output")).to_contain_text("run live")
        expect(page.locator("#succeeded")).to_have_text(str(ROWS))
        expect(page.locator("#passes tr")).to_have_count(3, timeout=10_000)  # the header, bill's pass, the rerun's
        page.screenshot(path=tmp_path / "dashboard.png")
        stats = api.stats()
    assert stats["customers_charged"] == ROWS and stats["customers_charged_more_than_once"] == 0
    assert errors == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    if COPY_SCREENSHOT_TO:
        shutil.copy(tmp_path / "dashboard.png", COPY_SCREENSHOT_TO)


def _open_when_the_run_exists(page, url: str, bill: subprocess.Popen, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if page.goto(url).status == 200:
            return
        assert bill.poll() is None, bill.stderr.read() if bill.stderr else "bill exited"
        time.sleep(0.2)
    raise AssertionError(f"{url} did not show the run within {limit:g} s")


OPERATOR_PASSWORD = "operator-password-0123"
VIEWER_PASSWORD = "viewer-password-456789"


@pytest.fixture
def users(tmp_path) -> str:
    """A users file with the operator ``olga`` and the viewer ``vic``."""
    path = str(tmp_path / "users.txt")
    for name, role, password in (("olga", "operator", OPERATOR_PASSWORD), ("vic", "viewer", VIEWER_PASSWORD)):
        subprocess.run(
            [sys.executable, "-m", "engine", "dashboard-user", "add", name, "--role", role, "--users", path],
            input=password + "\n", text=True, check=True, capture_output=True,
        )  # fmt: skip
    return path


def _log_in(page, base: str, name: str, password: str) -> None:
    page.goto(f"{base}/runs/small")
    expect(page.locator("#login")).to_be_visible()  # reading needs a login: the page sends us here
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("#log-in")
    expect(page.locator("#who")).to_contain_text(name)


def test_a_viewer_reads_and_cannot_rerun_an_operator_reruns_after_a_confirmation(customers, db, users, browser):
    with MockProcess(p500=0.3, seed=4) as api:
        result = subprocess.run(
            [sys.executable, "-m", "engine", "bill", customers(40), "--url", api.charge_url(), "--db", db,
             "--run-id", "small", "--max-attempts", "1", "--quiet"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        failed = status_counts(db, "small")["failed"]
        api.configure(p500=0.0)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "ENGINE_DASHBOARD_TOKEN"}
        command = [sys.executable, "-m", "engine", "dashboard", "--db", db, "--port", str(port)]
        process = subprocess.Popen(
            [*command, "--allow-actions", "--users", users, "--login"], env=env, stderr=subprocess.PIPE, text=True
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_until_serving(base, process)
            page = browser.new_page()
            blocked: list[str] = []  # anything the Content-Security-Policy stopped
            page.on(
                "console", lambda message: "Content Security Policy" in message.text and blocked.append(message.text)
            )
            _log_in(page, base, "vic", VIEWER_PASSWORD)
            expect(page.locator("#who")).to_have_text("vic (viewer)")
            expect(page.locator("#failed")).to_have_text(str(failed))
            assert page.locator("#rerun-failed").count() == 0 and page.locator("#pause").count() == 0
            page.goto(f"{base}/runs/small/failures")
            assert page.locator("#rerun-filtered").count() == 0  # a viewer has no rerun button
            page.click("#logout")

            _log_in(page, base, "olga", OPERATOR_PASSWORD)
            page.goto(f"{base}/runs/small/failures")
            assert page.locator("#rerun-form input[name=token]").count() == 0  # logged in: no token to type
            asked: list[str] = []
            page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
            page.click("#rerun-filtered")
            expect(page.locator("#rerun-outcome")).to_have_text("exit code 0", timeout=60_000)
            assert asked == [f"Send {failed} rows of small again?"]
            expect(page.locator("#failed")).to_have_text("0")
            expect(page.locator("#audit")).to_contain_text("olga")
            expect(page.locator("#audit tr").nth(1)).to_contain_text("rerun")
            assert blocked == []
        finally:
            process.terminate()
            process.wait(10)
    assert status_counts(db, "small").get("failed", 0) == 0
