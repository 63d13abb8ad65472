"""The bundled mock API's knobs that model less kind servers, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

from engine.mock.process import MockProcess


def charge(api: MockProcess, customer: str, key: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", "X-Probe": "seen"}
    if key:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(
        f"{api.base_url}/v1/customers/{customer}/charges", data=b"{}", method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def twice_at_once(api: MockProcess, key: str) -> list[int]:
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(charge(api, "c1", key)[0])) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(statuses)


def test_a_key_in_progress_is_locked_by_default():
    with MockProcess(latency=0.3) as api:
        assert twice_at_once(api, "k1") == [200, 409]
        assert charge(api, "c1", "k1")[0] == 200  # replayed
        stats = api.stats()
    assert stats["charges"] == 1 and stats["replays"] == 1


def test_without_the_lock_a_concurrent_duplicate_is_charged_too():
    with MockProcess(latency=0.3, lock_keys=False) as api:
        assert twice_at_once(api, "k1") == [200, 200]
        assert charge(api, "c1", "k1")[0] == 200  # a key that succeeded is still replayed
        stats = api.stats()
    assert stats["charges"] == 2 and stats["customers_charged_more_than_once"] == 1 and stats["replays"] == 1


def test_big_answers_and_echoed_headers():
    with MockProcess(body_bytes=5_000_000, echo_headers=True) as api:
        status, body = charge(api, "c2")
    assert status == 200 and len(body) == 5_000_000
    answer = json.loads(body)
    assert answer["charged"] == "c2" and answer["headers"]["x-probe"] == "seen"


def test_help_lists_the_knobs():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "mock-api", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--no-lock-keys", "--body-bytes", "--echo-headers", "--error-rate"):
        assert option in out
