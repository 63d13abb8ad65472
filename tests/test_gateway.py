"""Without keys, behind a gateway: its 502 and 504 usually follow a request the API received, so
they are ``unknown`` and never sent again. nginx on 127.0.0.1 proxies to the mock API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ENGINE, ledger_rows, status_counts

from engine.mock.process import MockProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import start_nginx  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")), reason="nginx is not installed"
)

#: nginx gives up on the upstream after 300 ms (504) and never tries it twice.
GATEWAY = """
        location /v1/ {{
            proxy_pass http://{upstream};
            proxy_read_timeout 300ms;
            proxy_next_upstream off;
        }}
"""


@pytest.fixture
def gateway(tmp_path):
    """``gateway(api)``: nginx in front of a mock API; the charge URL through it."""
    started = []

    def start(api: MockProcess) -> str:
        upstream = api.base_url.removeprefix("http://")
        process, port = start_nginx(str(tmp_path), extra=GATEWAY.format(upstream=upstream))
        started.append(process)
        return f"http://127.0.0.1:{port}/v1/customers/{{id}}/charges"

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


def test_without_keys_a_gateways_502_and_504_are_unknown_and_nobody_is_charged_twice(customers, db, gateway):
    rows = 300
    # 15% answered after the gateway's read timeout (504), 15% dropped after charging (502)
    with MockProcess(p_slow=0.15, slow_for=0.8, p_drop_after=0.15, lock_keys=False, seed=7) as api:
        url = gateway(api)
        started = time.monotonic()
        done = subprocess.run(
            [*ENGINE, "bill", customers(rows), "--url", url, "--db", db, "--run-id", "gw", "--no-idempotency",
             "--workers", "1", "--concurrency", "50"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        time.sleep(1.0)  # the slow ones are charged after the gateway gave up on them
        stats = api.stats()
    assert time.monotonic() - started < 30
    assert stats["customers_charged_more_than_once"] == 0, stats
    assert stats["customers_charged"] == rows  # every row went through once: none lost, none twice
    gateway_errors = dict(
        ledger_rows(db, "SELECT http_status, count(*) FROM requests WHERE http_status >= 500 GROUP BY 1")
    )
    assert gateway_errors.get(502, 0) > 10 and gateway_errors.get(504, 0) > 10, gateway_errors
    assert ledger_rows(db, "SELECT DISTINCT status FROM requests WHERE http_status IN (502, 504)") == [("unknown",)]
    assert ledger_rows(db, "SELECT max(attempts) FROM requests WHERE status = 'unknown'") == [(1,)]
    counts = status_counts(db, "gw")
    assert counts == {"succeeded": rows - sum(gateway_errors.values()), "unknown": sum(gateway_errors.values())}
    assert f"{counts['unknown']} unknown" in done.stdout
    said = " ".join(done.stdout.split())
    assert f"UNKNOWN {counts['unknown']} rows may or may not have been charged" in said, done.stdout
    assert "rerun gw --include-unknown --rows" in said
