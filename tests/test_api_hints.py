"""What the API tells us in headers: ``Idempotent-Replayed`` answers counted as replays,
``Stripe-Should-Retry`` heeded within the no-key rule, IETF ``RateLimit`` quotas obeyed as rests."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from conftest import ledger_rows, report_json, status_counts

from engine.delivery.breaker import BreakerSettings, CircuitBreaker
from engine.delivery.capture import Capture
from engine.delivery.gate import QUOTA_REST_CAP, WAIT, Gate
from engine.delivery.hints import NO_HINTS, Hints, read_hints
from engine.delivery.policy import FAILED, REJECTED, RETRYING, SUCCEEDED, UNKNOWN, Outcome, RetryPolicy
from engine.delivery.ratelimit import Pacer
from engine.mock.process import MockProcess


def _headers(*lines: bytes) -> dict[bytes, bytes]:
    capture = Capture()
    capture.reset(None)
    for line in (b"HTTP/1.1 200 OK\r\n", b"Content-Type: application/json\r\n", *lines, b"\r\n"):
        capture.header(line)
    return capture.hints


def test_the_header_callback_keeps_only_the_hints():
    kept = _headers(b"Idempotent-Replayed: true\r\n", b"Request-Id: req_1\r\n", b"stripe-should-retry:  false \r\n")
    assert kept == {b"idempotent-replayed": b"true", b"stripe-should-retry": b"false"}
    assert read_hints(kept) == Hints(replayed=True, should_retry=False)
    assert read_hints(_headers()) is NO_HINTS


@pytest.mark.parametrize(
    ("lines", "rest"),
    [
        ((b'RateLimit: "default";r=0;t=30\r\n',), 30.0),
        ((b'RateLimit: "default";r=5;t=30\r\n',), None),
        ((b'RateLimit: "burst";r=9;t=1, "daily";r=0;t=600\r\n',), 600.0),
        ((b"RateLimit-Remaining: 0\r\n", b"RateLimit-Reset: 7\r\n"), 7.0),
        ((b"RateLimit-Remaining: 3\r\n", b"RateLimit-Reset: 7\r\n"), None),
        ((b'RateLimit-Policy: "default";q=100;w=60\r\n',), None),
        ((b'RateLimit: "default";r=0;t=nan\r\n',), 0.0),
        ((b"RateLimit-Remaining: zero\r\n",), None),
    ],
)
def test_ratelimit_headers_say_how_long_to_rest(lines, rest):
    assert read_hints(_headers(*lines)).quota_rest == rest


def test_a_ratelimit_reset_given_as_a_unix_time_is_seconds_from_now():
    rest = read_hints({b"ratelimit-remaining": b"0", b"ratelimit-reset": str(int(time.time()) + 20).encode()})
    assert 18 < rest.quota_rest <= 20


def test_should_retry_is_heeded_within_the_no_key_rule():
    keyed, unkeyed = RetryPolicy(), RetryPolicy(idempotent=False)
    refused, busy, error = Outcome(http_status=400), Outcome(http_status=409), Outcome(http_status=500)
    assert keyed.classify(refused) == REJECTED and keyed.classify(refused._replace(should_retry=True)) == RETRYING
    assert keyed.classify(busy._replace(should_retry=False)) == FAILED  # "never retry": not in this pass
    assert keyed.decide(error._replace(should_retry=False), 1).state == FAILED
    # without keys a true resends nothing that may have charged, and a refusal stays refused
    assert unkeyed.classify(error._replace(should_retry=True)) == UNKNOWN
    assert unkeyed.classify(refused._replace(should_retry=True)) == REJECTED
    assert unkeyed.classify(error._replace(should_retry=False)) == UNKNOWN
    assert keyed.classify(Outcome(http_status=201, should_retry=False)) == SUCCEEDED


def test_a_spent_quota_rests_the_gate_until_its_reset_capped():
    context = multiprocessing.get_context("fork")
    gate = Gate(
        CircuitBreaker.create(context, BreakerSettings()), Pacer.create(context, None, workers=1, concurrency=10)
    )
    gate.rest_all(time.monotonic() + 0.2)
    assert gate.permit() is WAIT and 0.1 < gate.pace_ends_in() <= 0.2
    time.sleep(0.25)
    assert gate.permit() is not WAIT
    gate.rest_all(time.monotonic() + 10 * QUOTA_REST_CAP)
    gate.permit()
    assert gate.pace_ends_in() <= QUOTA_REST_CAP


def test_replayed_answers_are_counted_as_replays(customers, any_db, run, tmp_path):
    """The same bill again on a fresh ledger: same keys, so every success is the API's replay."""
    rows, path = 40, customers(40)
    with MockProcess() as api:
        first = run("bill", path, "--url", api.charge_url(), "--db", str(tmp_path / "first.db"), "--run-id", "rp")
        assert first.exit_code == 0, first.output
        again = run("bill", path, "--url", api.charge_url(), "--db", any_db, "--run-id", "rp")
        assert again.exit_code == 0, again.output
        assert api.stats()["charges"] == rows and api.stats()["replays"] == rows
    assert report_json(run, str(tmp_path / "first.db"), "rp")["replays"] == 0
    assert report_json(run, any_db, "rp")["replays"] == rows
    assert (
        f"{rows} succeeded ({rows} of them replays of an earlier attempt)" in run("report", "rp", "--db", any_db).output
    )
    assert ledger_rows(any_db, "SELECT count(*) FROM attempts WHERE replayed = 1") == [(rows,)]


def test_should_retry_true_retries_a_refusal_with_keys_only(customers, db, run):
    with MockProcess(refuse_first=400, should_retry="true") as api:
        keyed = run("bill", customers(10), "--url", api.charge_url(), "--db", db, "--run-id", "keyed")
        assert keyed.exit_code == 0, keyed.output
        assert ledger_rows(db, "SELECT min(attempts), max(attempts) FROM requests") == [(2, 2)]
        api.reset()
        unkeyed = run(
            "bill", customers(10, name="more.csv", start=11), "--url", api.charge_url(), "--db", db,
            "--run-id", "unkeyed", "--no-idempotency",
        )  # fmt: skip
        assert unkeyed.exit_code == 1
        assert status_counts(db, "unkeyed") == {"rejected": 10} and api.stats()["requests"] == 10


def test_should_retry_false_stops_the_retries_a_500_would_get(customers, db, run):
    with MockProcess(refuse_first=500, should_retry="false") as api:
        billed = run("bill", customers(10), "--url", api.charge_url(), "--db", db, "--run-id", "no")
        assert billed.exit_code == 1
        assert status_counts(db, "no") == {"failed": 10} and api.stats()["requests"] == 10
    with MockProcess(refuse_first=500) as api:  # the same answers without the header: retried, charged
        assert run("bill", customers(10), "--url", api.charge_url(), "--db", db, "--run-id", "yes").exit_code == 0
        assert api.stats()["requests"] == 20


def test_a_spent_ratelimit_quota_slows_the_run_instead_of_meeting_429s(customers, any_db, run):
    """4 requests a second: without the hint the next answer would be a 429 at once."""
    rows = 12
    with MockProcess(ratelimit=4, ratelimit_window=1.0) as api:
        started = time.monotonic()
        billed = run(
            "bill", customers(rows), "--url", api.charge_url(), "--db", any_db, "--run-id", "rl",
            "--workers", 1, "--concurrency", 1,
        )  # fmt: skip
        took = time.monotonic() - started
        assert billed.exit_code == 0, billed.output
        stats = api.stats()
    assert stats["http_status"] == {"200": rows} and stats["requests"] == rows
    assert 2.0 <= took < 15.0
