"""The retry policy: which outcomes are final, which are retried, and after how long.

A :class:`RetryPolicy` never changes and never sleeps; it only answers. The worker
asks :meth:`RetryPolicy.decide` after every attempt and schedules the retry itself.

Failures are classified by one question: *could the server have received the
request?* A connection that was never made is always safe to retry. A timeout or
reset after the request went out may already have charged the customer; with an
``Idempotency-Key`` the server deduplicates it, so it is retried too; without one
the outcome is ``unknown`` and left for a person to reconcile.

An API's ``Stripe-Should-Retry`` header, parsed into :attr:`Outcome.should_retry`, is heeded
within these rules: ``false`` stops retrying, ``true`` retries a refused answer, but only with a
key (:meth:`RetryPolicy.heed`).

Without a key an HTTP answer is judged by the same question. Only 429 and a 503 that
says when to come back (``Retry-After``) prove the request was turned away unprocessed;
a 502 or 504 usually comes from a gateway whose upstream *did* get the request, and a
500, 408, 409 or 425 may follow a charge too, so those are ``unknown`` as well.

With a key, an answer saying the key was first used with other parameters (Stripe's 400
``idempotency_error``, the IETF draft's 422) is ``key_conflict``: the original request was
charged under that key, and sending this one again cannot change the answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

from engine.states import (  # noqa: F401 (re-exported)
    FAILED,
    IN_FLIGHT,
    KEY_CONFLICT,
    PENDING,
    REJECTED,
    RETRYING,
    STATES,
    SUCCEEDED,
    UNKNOWN,
)

# libcurl's error numbers (CURLcode: a stable part of its ABI, the values of pycurl's E_* names),
# so deciding about an outcome needs no libcurl loaded.
E_UNSUPPORTED_PROTOCOL, E_URL_MALFORMAT, E_COULDNT_RESOLVE_PROXY, E_COULDNT_RESOLVE_HOST = 1, 3, 5, 6
E_COULDNT_CONNECT, E_HTTP2, E_PARTIAL_FILE, E_OPERATION_TIMEDOUT, E_SSL_CONNECT_ERROR = 7, 16, 18, 28, 35
E_GOT_NOTHING, E_SEND_ERROR, E_RECV_ERROR, E_SSL_CERTPROBLEM = 52, 55, 56, 58
E_PEER_FAILED_VERIFICATION, E_SSL_CACERT_BADFILE, E_SSL_ISSUER_ERROR = 60, 77, 83
E_SSL_PINNEDPUBKEYNOTMATCH, E_SSL_INVALIDCERTSTATUS, E_HTTP2_STREAM = 90, 91, 92
#: libcurl would have sent a request again (its connection died unanswered) but could not re-read the body.
E_SEND_FAIL_REWIND = 65

#: curl errors raised before any byte of the request could reach the server.
CONNECT_PHASE_ERRORS = frozenset(
    {E_COULDNT_RESOLVE_HOST, E_COULDNT_RESOLVE_PROXY, E_COULDNT_CONNECT, E_SSL_CONNECT_ERROR}
)
#: curl errors after which the request may or may not have been applied.
READ_PHASE_ERRORS = frozenset(
    {
        E_OPERATION_TIMEDOUT,
        E_GOT_NOTHING,
        E_SEND_ERROR,
        E_RECV_ERROR,
        E_PARTIAL_FILE,
        E_HTTP2,
        E_HTTP2_STREAM,
        E_SEND_FAIL_REWIND,
    }
)
#: curl errors of a request that cannot work as configured (URL, protocol, certificate): retrying cannot help.
CONFIG_ERRORS = frozenset(
    {
        E_UNSUPPORTED_PROTOCOL,
        E_URL_MALFORMAT,
        E_SSL_CERTPROBLEM,
        E_PEER_FAILED_VERIFICATION,
        E_SSL_CACERT_BADFILE,
        E_SSL_ISSUER_ERROR,
        E_SSL_PINNEDPUBKEYNOTMATCH,
        E_SSL_INVALIDCERTSTATUS,
    }
)


class Outcome(NamedTuple):
    """What one attempt produced, as the transport saw it."""

    http_status: int | None = None
    curl_error: int | None = None
    connected: bool = True
    #: Seconds a 429 or 503 asked to wait (libcurl parses delta-seconds and HTTP dates), or None.
    retry_after: float | None = None
    #: libcurl took the request's body to send: a connect error after that came from reconnecting
    #: to send it again, so the request may have reached the server all the same.
    body_taken: bool = False
    #: The first bytes of the answer's body (what says why a 400 or 422 refused the request).
    excerpt: str | None = None
    #: The answer's ``Stripe-Should-Retry`` header (None: absent): the API's own word on retrying it.
    should_retry: bool | None = None


class Decision(NamedTuple):
    """The state a row moves to after an attempt, and the delay before the next one."""

    state: str
    delay: float = 0.0


_SUCCESS = Decision(SUCCEEDED)
_RANDOM = random.Random()


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Immutable retry rules; ``decide`` is a pure function of the attempt and a random draw."""

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    retry_after_cap: float = 120.0
    idempotent: bool = True

    #: HTTP statuses that ask to be retried (409: same Idempotency-Key still in progress).
    RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
    #: Statuses whose Retry-After header sets the delay.
    RETRY_AFTER_STATUSES = frozenset({429, 503})
    #: Without keys, the statuses that prove the request was not processed: 429 always, 503 only
    #: with a Retry-After (a gateway's own 503 may follow an upstream that took the request).
    UNPROCESSED_STATUSES = frozenset({429})
    #: Statuses an API uses to say an idempotency key was first sent with other parameters.
    KEY_CONFLICT_STATUSES = frozenset({400, 422})
    #: What such an answer's body says (lower-case), within the first bytes an excerpt keeps.
    KEY_CONFLICT_MARKERS = (
        "idempotency_error",  # Stripe's error type
        "keys for idempotent requests can only be used with the same parameters",  # Stripe's message
        "idempotency-key is already used",  # the IETF draft's example
        "idempotency key is already used",
        "idempotency key reused",
        "idempotency-key reused",
    )

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_base < 0 or self.backoff_cap < 0 or self.retry_after_cap < 0:
            raise ValueError("back-off times must not be negative")

    def classify(self, outcome: Outcome) -> str:
        """``succeeded``, ``rejected``, ``key_conflict``, ``unknown``, ``failed`` (cannot work) or ``retrying``,
        ignoring attempts; the API's ``Stripe-Should-Retry`` weighed in (:meth:`heed`)."""
        state = self._classify(outcome)
        return state if outcome.should_retry is None else self.heed(state, outcome.should_retry)

    def heed(self, state: str, should_retry: bool) -> str:
        """``state`` after the API's ``Stripe-Should-Retry``. ``false``: a retry is not sent in this pass
        (``failed``: a later rerun may). ``true``: a refused answer is retried, with a key only; without
        one the no-key rule wins and nothing that may have charged is resent (an ``unknown`` stays
        ``unknown``, a ``rejected`` stays ``rejected``). A key conflict is final either way."""
        if not should_retry:
            return FAILED if state == RETRYING else state
        return RETRYING if state == REJECTED and self.idempotent else state

    def _classify(self, outcome: Outcome) -> str:
        status = outcome.http_status
        if outcome.curl_error is None and status is not None:
            if 200 <= status < 300:
                return SUCCEEDED
            if status in self.RETRY_STATUSES:
                return RETRYING if self.idempotent or self.proves_unprocessed(outcome) else UNKNOWN
            if self.idempotent and self.is_key_conflict(outcome):
                return KEY_CONFLICT
            return REJECTED
        if outcome.curl_error in CONFIG_ERRORS:
            return FAILED
        if not outcome.connected or (outcome.curl_error in CONNECT_PHASE_ERRORS and not outcome.body_taken):
            return RETRYING
        if self.idempotent:
            return RETRYING
        return UNKNOWN

    def proves_unprocessed(self, outcome: Outcome) -> bool:
        """Does this HTTP answer prove the server did not process the request (safe to send again
        without a key)? A 429, or a 503 that says when to come back."""
        status = outcome.http_status
        return status in self.UNPROCESSED_STATUSES or (status == 503 and outcome.retry_after is not None)

    def is_key_conflict(self, outcome: Outcome) -> bool:
        """Does this answer say the idempotency key was first used with other parameters?"""
        if outcome.http_status not in self.KEY_CONFLICT_STATUSES or not outcome.excerpt:
            return False
        text = outcome.excerpt.lower()
        return any(marker in text for marker in self.KEY_CONFLICT_MARKERS)

    def decide(self, outcome: Outcome, attempt: int, rng: random.Random | None = None) -> Decision:
        """The row's next state after its ``attempt``-th attempt in this pass (1-based)."""
        if outcome.curl_error is None and 200 <= (outcome.http_status or 0) < 300:
            return _SUCCESS
        state = self.classify(outcome)
        if state != RETRYING:
            return Decision(state)
        if attempt >= self.max_attempts:
            return Decision(FAILED)
        delay = self.backoff(attempt, rng)
        if outcome.http_status in self.RETRY_AFTER_STATUSES and outcome.retry_after:
            # the server said how long: wait exactly that (capped), not longer
            delay = min(outcome.retry_after, self.retry_after_cap)
        return Decision(RETRYING, delay)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter exponential back-off: uniform in [0, min(cap, base * 2**(attempt-1))]."""
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** min(attempt - 1, 62)))
        return (rng or _RANDOM).uniform(0, ceiling)
