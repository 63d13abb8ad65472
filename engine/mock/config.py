"""The fault knobs of the bundled mock billing API (see :mod:`engine.mock.api`).

Kept apart from the server so the CLI can show their defaults without importing asyncio.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def knob(default, help: str, metavar: str | None = None, *aliases: str):
    """A field of :class:`MockConfig` with what its ``mock-api`` option shows."""
    return field(default=default, metadata={"help": help, "metavar": metavar, "aliases": aliases})


@dataclass
class MockConfig:
    """The fault knobs; probabilities are per request, times in seconds. Each is a ``mock-api`` option."""

    latency: float = knob(0.0, "Seconds before each answer.", "S")
    jitter: float = knob(0.0, "Latency varies uniformly by up to this much either way.", "S")
    p500: float = knob(0.0, "Share of requests answered 500.", "P", "--error-rate")
    p503: float = knob(0.0, "Share answered 503 with Retry-After.", "P")
    p429: float = knob(0.0, "Share answered 429 with Retry-After.", "P")
    retry_after: float = knob(1.0, "Retry-After sent with 429 and 503.", "S")
    p_drop_before: float = knob(0.0, "Share of connections closed without charging or answering.", "P")
    p_drop_after: float = knob(
        0.0, "Share charged, then closed without an answer (what double-charges naive clients).", "P"
    )
    p_hang: float = knob(0.0, "Share never answered.", "P")
    p_slow: float = knob(
        0.0, "Share charged only after --slow-for seconds (past a gateway's read timeout: its 504).", "P"
    )
    slow_for: float = knob(2.0, "How long a --p-slow request takes.", "S")
    p_key_conflict: float = knob(
        0.0, "Share of keyed requests answered 400 idempotency_error (a key reused with other parameters).", "P"
    )
    fail_rate: float = knob(
        0.0, "Share of customers (fixed by id) answered 503 until changed via POST /admin/config.", "P"
    )
    refuse_rate: float = knob(
        0.0, "Share of customers (fixed by id) refused for good: 402 card_declined, as a wrong template would be.", "P"
    )
    outage_at: float | None = knob(
        None, "Start an outage (all 503) S seconds after start (or after POST /admin/config sets it).", "S"
    )
    outage_for: float = knob(0.0, "Length of the outage.", "S")
    max_inflight: int = knob(0, "Answer 429 beyond N requests in flight (0: no limit).", "N")
    seed: int | None = knob(None, "Random seed for reproducible faults.", "N")
    lock_keys: bool = knob(
        True,
        "Answer 409 to a request whose Idempotency-Key is still being processed; "
        "--no-lock-keys charges it too, as many real APIs do.",
    )
    body_bytes: int = knob(0, "Pad every successful answer to at least N bytes.", "N")
    echo_headers: bool = knob(
        False, "Quote the request's headers in every answer's body (as APIs that quote the request in errors do)."
    )

    echo_encoded: bool = knob(
        False,
        "Quote the Authorization header's value first in every answer's body, in turn JSON-escaped, "
        "URL-encoded (upper/lower-case hex, + for space) and base64 (alone, and as Basic user:token).",
    )
    refuse_first: int = knob(
        0, "Answer each customer's first request with this HTTP status, charging nothing (0: never).", "STATUS"
    )
    should_retry: str = knob(
        "", "Send Stripe-Should-Retry with this value (true or false) on every answer that is not 2xx.", "WORD"
    )
    ratelimit: int = knob(
        0,
        "Allow N requests per --ratelimit-window, 429 beyond; every answer says what is left in IETF"
        " RateLimit and RateLimit-Policy headers (0: no quota).",
        "N",
    )
    ratelimit_window: float = knob(1.0, "The quota window of --ratelimit.", "S")

    require_token: bool = knob(
        False,
        "Charge only with 'Authorization: Bearer <token>' from POST /oauth/token (OAuth2 client "
        "credentials); 401 otherwise.",
    )
    token_expires_in: float = knob(3600.0, "Lifetime of a token from POST /oauth/token (its expires_in).", "S")
    token_valid_for: float | None = knob(
        None, "Tokens stop working after S seconds, whatever expires_in said (a server that revokes early).", "S"
    )

    #: The type of each knob whose default is None.
    OPTIONAL_TYPES = {"outage_at": float, "seed": int, "token_valid_for": float}

    def update(self, changes: dict) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise KeyError(key)
            setattr(self, key, value)
