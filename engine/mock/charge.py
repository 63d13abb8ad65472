"""A charge: what the mock API answers a ``POST`` that bills a customer.

Authorization and the rate-limit quota first, then idempotency (a key that succeeded is replayed, one
in progress gets 409), then the configured latency and faults (drops, hangs, injected statuses, failing
or refused customers), and only then the charge itself, counted per customer so ``/stats`` can show who
was charged twice. :class:`Drop` and :class:`Hang` tell the connection to close or never answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, quote_plus

from engine.mock.config import MockConfig
from engine.mock.lookup import CUSTOMER_PATH

if TYPE_CHECKING:
    from engine.mock.api import BillingState, Request


class Drop(Exception):
    """Close the connection without an answer."""


class Hang(Exception):
    """Never answer."""


def _customer(request: Request) -> str | None:
    """The customer a charge names: the path's ``/customers/<id>``, else the body's ``customer`` or ``id``."""
    match = CUSTOMER_PATH.search(request.path)
    if match:
        return match.group(1).decode("utf-8", "replace")
    content_type = request.headers.get(b"content-type", b"")
    try:
        if b"form" in content_type:
            fields = dict(parse_qsl(request.body.decode()))
        else:
            fields = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(fields, dict):
        return None
    value = fields.get("customer", fields.get("id"))
    return None if value is None else str(value)


async def charge(state: BillingState, request: Request) -> tuple[int, bytes, str]:
    """A charge's answer, with the quota's RateLimit headers and the knobs' Stripe-Should-Retry."""
    state.counters["requests"] += 1
    now = time.monotonic()
    state.count_arrival(now)
    if not state.tokens.allows(request.headers):  # before anything is charged
        state.counters["unauthorized"] += 1
        return 401, b'{"error":"invalid_token"}', 'WWW-Authenticate: Bearer error="invalid_token"\r\n'
    allowed, quota = state.quota.take(now)
    if not allowed:
        status, body, extra = 429, b'{"error":"rate limit exceeded"}', ""
    else:
        status, body, extra = await _answer(state, request)
    if state.config.should_retry and not 200 <= status < 300:
        extra += f"Stripe-Should-Retry: {state.config.should_retry}\r\n"
    return status, body, quota + extra


async def _answer(state: BillingState, request: Request) -> tuple[int, bytes, str]:
    config = state.config
    key = request.headers.get(b"idempotency-key", b"").decode("utf-8", "replace") or None
    remembered = state.keys.get(key) if key is not None else None
    if remembered is not None:
        state.counters["replays"] += 1
        status, body = remembered
        return status, body, "Idempotent-Replayed: true\r\n"
    if key is not None and config.p_key_conflict and state.rng.random() < config.p_key_conflict:
        state.counters["key_conflicts"] += 1
        return 400, _KEY_CONFLICT_BODY, ""
    if key in state.keys and config.lock_keys:  # still being processed; without the lock it is charged again
        state.counters["conflicts"] += 1
        return 409, b'{"error":"a request with this Idempotency-Key is in progress"}', ""
    if config.max_inflight and state.inflight >= config.max_inflight:
        return 429, b'{"error":"too many requests in flight"}', f"Retry-After: {config.retry_after:g}\r\n"
    customer = _customer(request)
    if customer is None:
        return 400, b'{"error":"no customer in path or body"}', ""
    if config.refuse_first and customer not in state.refused:
        state.refused.add(customer)
        return config.refuse_first, json.dumps({"error": f"injected {config.refuse_first}"}).encode(), ""
    if key is not None:
        state.keys[key] = None
    state.inflight += 1
    state.max_seen_inflight = max(state.max_seen_inflight, state.inflight)
    try:
        status, body, extra = await _charge_after_latency(state, customer, key)
        body = _decorate(config, request, status, body)
        if config.echo_encoded:
            body = _echo_encoded(state, request.headers.get(b"authorization", b"").decode("latin-1")) + body
        return status, body, extra
    finally:
        state.inflight -= 1
        if key is not None and state.keys.get(key) is None:
            state.keys.pop(key, None)


def _decorate(config: MockConfig, request: Request, status: int, body: bytes) -> bytes:
    """Echo the request's headers, and pad a success to ``body_bytes``."""
    if config.echo_headers:
        answer = json.loads(body)
        answer["headers"] = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.items()}
        body = json.dumps(answer).encode()
    if 200 <= status < 300 and len(body) < config.body_bytes:
        body += b" " * (config.body_bytes - len(body))  # JSON allows trailing whitespace
    return body


#: Stripe's answer to a key reused with other parameters (the message comes first, the type after it).
_KEY_CONFLICT_BODY = json.dumps(
    {
        "error": {
            "message": "Keys for idempotent requests can only be used with the same parameters they were first"
            " used with. Try using a key other than the one sent if you meant to execute a different request.",
            "type": "idempotency_error",
        }
    }
).encode()


def _echo_encoded(state: BillingState, value: str) -> bytes:
    """``value`` in the next of the encodings an API may reflect a credential in, then a space (the
    answer's JSON follows: the quote is first, so a short excerpt keeps it)."""
    token = value.split(" ", 1)[-1]
    encodings = (
        lambda: json.dumps(value).replace("/", "\\/")[1:-1],
        lambda: quote(value, safe=""),
        lambda: re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(value, safe="")),
        lambda: quote_plus(value, safe=""),
        lambda: base64.b64encode(value.encode()).decode(),
        lambda: base64.b64encode(token.encode()).decode(),
        lambda: base64.b64encode(f"user:{token}".encode()).decode(),
    )
    state.counters["echoed"] += 1
    return encodings[state.counters["echoed"] % len(encodings)]().encode() + b" "


async def _charge_after_latency(state: BillingState, customer: str, key: str | None) -> tuple[int, bytes, str]:
    config, rng = state.config, state.rng
    delay = config.latency + (rng.uniform(-config.jitter, config.jitter) if config.jitter else 0.0)
    if config.p_slow and rng.random() < config.p_slow:
        delay = config.slow_for
    if delay > 0:
        await asyncio.sleep(delay)
    if state.in_outage():
        return 503, b'{"error":"down for maintenance"}', ""
    roll = rng.random()
    for name, p in (("drop_before", config.p_drop_before), ("hang", config.p_hang)):
        if roll < p:
            state.counters[name] += 1
            raise Drop if name == "drop_before" else Hang
        roll -= p
    for status, p in ((500, config.p500), (503, config.p503), (429, config.p429)):
        if roll < p:
            extra = f"Retry-After: {config.retry_after:g}\r\n" if status in (429, 503) else ""
            return status, json.dumps({"error": f"injected {status}"}).encode(), extra
        roll -= p
    if state.customer_fails(customer):
        return 503, b'{"error":"billing backend unavailable for this customer"}', ""
    if state.customer_refused(customer):
        return 402, b'{"error":{"code":"card_declined","message":"Your card was declined."}}', ""
    state.charges[customer] += 1
    charge_id = f"ch_{next(state.charge_ids):08d}"
    body = json.dumps({"id": charge_id, "charged": customer, "charge": state.charges[customer]}).encode()
    if key is not None:
        state.keys[key] = (200, body)
    if roll < config.p_drop_after:
        state.counters["drop_after"] += 1
        raise Drop
    return 200, body, ""
