"""The retry policy's pure decisions: classification, back-off bounds, Retry-After."""

import dataclasses
import random

import pycurl
import pytest

from engine.delivery import policy as policy_module
from engine.delivery.policy import Outcome, RetryPolicy
from engine.states import FAILED, KEY_CONFLICT, REJECTED, RETRYING, SUCCEEDED, UNKNOWN

POLICY = RetryPolicy()


@pytest.mark.parametrize(
    "status,state",
    [
        (200, SUCCEEDED),
        (201, SUCCEEDED),
        (204, SUCCEEDED),
        (301, REJECTED),
        (302, REJECTED),
        (400, REJECTED),
        (401, REJECTED),
        (402, REJECTED),
        (403, REJECTED),
        (404, REJECTED),
        (410, REJECTED),
        (422, REJECTED),
        (408, RETRYING),
        (409, RETRYING),
        (425, RETRYING),
        (429, RETRYING),
        (500, RETRYING),
        (502, RETRYING),
        (503, RETRYING),
        (504, RETRYING),
    ],
)
def test_http_status_classification(status, state):
    assert POLICY.classify(Outcome(http_status=status)) == state


@pytest.mark.parametrize("error", [pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST])
def test_connect_errors_are_always_retried(error):
    unkeyed = RetryPolicy(idempotent=False)
    assert unkeyed.classify(Outcome(curl_error=error, connected=False)) == RETRYING


@pytest.mark.parametrize("error", [pycurl.E_OPERATION_TIMEDOUT, pycurl.E_GOT_NOTHING, pycurl.E_RECV_ERROR])
def test_errors_after_sending_are_retried_only_with_a_key(error):
    assert POLICY.classify(Outcome(curl_error=error, connected=True)) == RETRYING
    assert RetryPolicy(idempotent=False).classify(Outcome(curl_error=error, connected=True)) == UNKNOWN


@pytest.mark.parametrize("error", [pycurl.E_COULDNT_CONNECT, pycurl.E_OPERATION_TIMEDOUT, pycurl.E_SEND_FAIL_REWIND])
def test_an_error_after_libcurl_took_the_body_is_retried_only_with_a_key(error):
    """libcurl reconnecting to send a request again fails at connect, or cannot re-read the body:
    the first copy may have been received all the same."""
    outcome = Outcome(curl_error=error, connected=True, body_taken=True)
    assert POLICY.classify(outcome) == RETRYING
    assert RetryPolicy(idempotent=False).classify(outcome) == UNKNOWN


UNKEYED = RetryPolicy(idempotent=False)


@pytest.mark.parametrize("status", [500, 502, 504, 408, 409, 425])
def test_without_a_key_an_answer_that_may_follow_a_charge_is_unknown(status):
    """A gateway's 502/504 usually means the API got the request: without a key, sending it again
    could charge twice."""
    assert UNKEYED.classify(Outcome(http_status=status)) == UNKNOWN
    assert UNKEYED.decide(Outcome(http_status=status, retry_after=5.0), 1) == (UNKNOWN, 0.0)
    assert POLICY.classify(Outcome(http_status=status)) == RETRYING  # with a key: unchanged


def test_without_a_key_a_503_is_retried_only_when_it_says_when_to_come_back():
    assert UNKEYED.classify(Outcome(http_status=503)) == UNKNOWN
    assert UNKEYED.decide(Outcome(http_status=503, retry_after=2.0), 1) == (RETRYING, 2.0)
    assert UNKEYED.decide(Outcome(http_status=503, retry_after=2.0), 5).state == FAILED  # attempts still bound it


def test_without_a_key_a_429_is_retried_with_or_without_retry_after():
    assert UNKEYED.decide(Outcome(http_status=429, retry_after=3.0), 1) == (RETRYING, 3.0)
    assert UNKEYED.classify(Outcome(http_status=429)) == RETRYING


@pytest.mark.parametrize("error", [pycurl.E_PARTIAL_FILE, pycurl.E_RECV_ERROR, pycurl.E_GOT_NOTHING])
def test_without_a_key_an_answer_cut_off_is_unknown(error):
    assert UNKEYED.classify(Outcome(http_status=None, curl_error=error, connected=True)) == UNKNOWN


STRIPE_CONFLICT = (
    '{"error": {"message": "Keys for idempotent requests can only be used with the same parameters they were'
    " first used with. Try using a key other than 'k-1' if you meant to execute a different request.\", "
    '"type": "idempotency_error"}}'
)


@pytest.mark.parametrize(
    "status,excerpt",
    [
        (400, '{"error": {"type": "idempotency_error", "message": "Keys for idempotent requests..."}}'),
        (400, STRIPE_CONFLICT[:200]),  # "type" comes after the long message: cut off from the excerpt
        (422, '{"title": "Idempotency-Key is already used", "detail": "... different payloads ..."}'),
    ],
)
def test_a_key_reused_with_other_parameters_is_a_key_conflict(status, excerpt):
    outcome = Outcome(http_status=status, excerpt=excerpt)
    assert POLICY.classify(outcome) == KEY_CONFLICT
    assert POLICY.decide(outcome, 1) == (KEY_CONFLICT, 0.0)
    assert UNKEYED.classify(outcome) == REJECTED  # no key was sent: it cannot be about one


@pytest.mark.parametrize(
    "status,excerpt",
    [(400, '{"error": {"type": "invalid_request_error"}}'), (422, None), (404, '{"type": "idempotency_error"}')],
)
def test_other_refusals_stay_rejected(status, excerpt):
    assert POLICY.classify(Outcome(http_status=status, excerpt=excerpt)) == REJECTED


def test_timeout_before_connecting_is_safe_without_a_key():
    outcome = Outcome(curl_error=pycurl.E_OPERATION_TIMEDOUT, connected=False)
    assert RetryPolicy(idempotent=False).classify(outcome) == RETRYING


def test_attempts_run_out_into_failed():
    policy = RetryPolicy(max_attempts=3)
    assert policy.decide(Outcome(http_status=503), 2).state == RETRYING
    assert policy.decide(Outcome(http_status=503), 3).state == FAILED
    assert policy.decide(Outcome(http_status=404), 1).state == REJECTED


def test_backoff_is_full_jitter_within_the_capped_exponential():
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=4.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (60, 4.0)]:
        draws = [policy.backoff(attempt, rng) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling * 0.9 and min(draws) < ceiling * 0.1


def test_retry_after_sets_the_delay_on_429_and_503_only():
    assert POLICY.decide(Outcome(http_status=429, retry_after=7.0), 1).delay == 7
    assert POLICY.decide(Outcome(http_status=503, retry_after=7.0), 1).delay == 7
    assert POLICY.decide(Outcome(http_status=500, retry_after=7.0), 1).delay <= 0.5


def test_retry_after_is_capped():
    policy = RetryPolicy(retry_after_cap=10)
    assert policy.decide(Outcome(http_status=429, retry_after=3600.0), 1).delay == 10


def test_retry_after_zero_does_not_cause_an_immediate_retry_storm():
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=1.0)
    delays = [policy.decide(Outcome(http_status=429, retry_after=0.0), 3).delay for _ in range(200)]
    assert max(delays) > 0.5


def test_the_curl_error_numbers_are_libcurls():
    """The policy decides without loading libcurl: its numbers must be pycurl's E_* values."""
    names = [name for name in dir(policy_module) if name.startswith("E_")]
    assert len(names) >= 19
    for name in names:
        if hasattr(pycurl, name):
            assert getattr(policy_module, name) == getattr(pycurl, name), name


def test_policy_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        POLICY.max_attempts = 9


@pytest.mark.parametrize("error", [1, 3, 58, 60, 77, 83, 90, 91])  # protocol, URL, client cert, peer cert, CA file,
def test_a_request_that_cannot_work_as_configured_fails_at_once(error):  # issuer, pinned key, cert status
    for policy in (POLICY, RetryPolicy(idempotent=False)):
        assert policy.decide(Outcome(curl_error=error, connected=False), 1) == (FAILED, 0.0)
        assert policy.decide(Outcome(curl_error=error, connected=True), 1) == (FAILED, 0.0)


def test_without_retry_after_a_429_backs_off():
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=1.0)
    for retry_after in (None, 0.0):  # what the transport reports for no, empty or unreadable Retry-After
        delays = {policy.decide(Outcome(http_status=429, retry_after=retry_after), 3).delay for _ in range(50)}
        assert len(delays) > 1 and max(delays) <= 1.0


def test_retry_after_is_the_wait_not_a_floor_under_a_longer_back_off():
    policy = RetryPolicy(backoff_base=30.0, backoff_cap=30.0)
    assert {policy.decide(Outcome(http_status=429, retry_after=1.0), 5 - 1).delay for _ in range(50)} == {1.0}
