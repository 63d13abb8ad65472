"""The bundled mock billing API: slow, sometimes failing, idempotent like Stripe.

An asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) that holds thousands
of connections on one core. ``POST`` to any path charges a customer, named by the
path (``/customers/<id>/...``) or by the body's ``customer`` or ``id`` field. A
request whose ``Idempotency-Key`` already succeeded is replayed, not charged again;
one whose key is still being processed gets 409 (or, with ``lock_keys`` off, is
charged again, as by many real APIs). A charge's answer carries its id (``"id": "ch_..."``);
knobs add ``Stripe-Should-Retry`` and an IETF ``RateLimit`` quota. ``GET /v1/charges/by-key/<key>`` and
``GET /v1/customers/<id>/charges`` look a charge up without charging (what ``engine
reconcile`` asks). ``GET /stats`` returns counters,
including the customers charged more than once; ``POST /admin/config`` changes the
fault knobs while it runs, ``POST /admin/reset`` clears the counters.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import random
import re
import time
import zlib
from collections import Counter, deque
from urllib.parse import parse_qsl, quote, quote_plus

from engine.mock.config import MockConfig
from engine.mock.lookup import CUSTOMER_PATH, lookup
from engine.mock.quota import Quota
from engine.mock.tokens import TokenIssuer

_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BillingState:
    """Charges, idempotency keys and counters, shared by every connection."""

    def __init__(self, config: MockConfig):
        self.config = config
        self.rng = random.Random(config.seed)
        self.started = time.monotonic()
        self.charge_ids = itertools.count(1)  # never reset: a charge id stays unique while the server runs
        self.tokens = TokenIssuer(config)
        self.reset()

    def reset(self) -> None:
        self.charges: Counter = Counter()
        self.keys: dict[str, tuple[int, bytes] | None] = {}
        self.statuses: Counter = Counter()
        self.counters: Counter = Counter()
        self.inflight = 0
        self.max_seen_inflight = 0
        self.recent: deque = deque()
        self.max_per_second = 0
        self.refused: set[str] = set()  # customers whose first request got --refuse-first
        self.quota = Quota(self.config, self.started)

    def stats(self) -> dict:
        twice = [c for c, n in self.charges.items() if n > 1]
        return {
            "requests": self.counters["requests"],
            "charges": sum(self.charges.values()),
            "customers_charged": len(self.charges),
            "customers_charged_more_than_once": len(twice),
            "double_charged_sample": twice[:20],
            "replays": self.counters["replays"],
            "conflicts": self.counters["conflicts"],
            "dropped_before": self.counters["drop_before"],
            "dropped_after": self.counters["drop_after"],
            "hung": self.counters["hang"],
            "max_inflight": self.max_seen_inflight,
            "max_requests_in_one_second": self.max_per_second,
            "http_status": {str(k): v for k, v in sorted(self.statuses.items())},
            "token_requests": self.counters["token_requests"],
            "unauthorized": self.counters["unauthorized"],
        }

    def count_arrival(self, now: float) -> None:
        """Track the most requests seen in any sliding one-second window."""
        recent = self.recent
        recent.append(now)
        while recent[0] <= now - 1.0:
            recent.popleft()
        self.max_per_second = max(self.max_per_second, len(recent))

    def in_outage(self) -> bool:
        c = self.config
        if c.outage_at is None:
            return False
        elapsed = time.monotonic() - self.started
        return c.outage_at <= elapsed < c.outage_at + c.outage_for

    def customer_fails(self, customer: str) -> bool:
        """A fixed share of customers (by hash) whose charges fail while ``fail_rate`` is set."""
        return _share_of_customers(customer, self.config.fail_rate)

    def customer_refused(self, customer: str) -> bool:
        """A fixed share of customers (by hash) refused for good (402) while ``refuse_rate`` is set."""
        return _share_of_customers(customer, self.config.refuse_rate)


def _share_of_customers(customer: str, rate: float) -> bool:
    """Whether ``customer`` is among a fixed ``rate`` share of all customers (by a hash of the id)."""
    return rate > 0 and (zlib.crc32(customer.encode()) % 10_000) < rate * 10_000


class Request:
    __slots__ = ("method", "path", "headers", "body")

    def __init__(self, method: bytes, path: bytes, headers: dict, body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body


class _Drop(Exception):
    """Close the connection without an answer."""


class _Hang(Exception):
    """Never answer."""


class BillingProtocol(asyncio.Protocol):
    """One client connection: parse requests in order, answer each after the configured latency."""

    def __init__(self, state: BillingState):
        self.state = state
        self.buffer = bytearray()
        self.busy = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def connection_lost(self, exc):
        self.transport = None

    def _next(self) -> None:
        if self.busy:
            return
        request = self._parse()
        if request is not None:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve(request))

    def _parse(self) -> Request | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).split(b"\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0") or 0)
        if len(self.buffer) < end + 4 + length:
            return None
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        method, path, *_ = head[0].split(b" ") + [b"", b""]
        return Request(method, path, headers, body)

    async def _serve(self, request: Request) -> None:
        try:
            status, body, extra = await handle(self.state, request)
        except _Drop:
            if self.transport is not None:
                self.transport.close()
            return
        except _Hang:
            return
        if self.transport is None or self.transport.is_closing():
            return
        self.state.statuses[status] += 1
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n"
        )
        self.transport.write(head.encode() + body)
        self.busy = False
        self._next()


async def handle(state: BillingState, request: Request) -> tuple[int, bytes, str]:
    """Route one request; returns (status, body, extra header lines)."""
    if request.method == b"GET" and request.path.startswith(b"/stats"):
        return 200, json.dumps(state.stats()).encode(), ""
    if request.method == b"POST" and request.path.startswith(b"/admin/"):
        return _admin(state, request)
    if request.method == b"POST" and request.path.startswith(b"/oauth/token"):
        state.counters["token_requests"] += 1
        return state.tokens.issue(request.headers, request.body)
    if request.method == b"GET" and (found := await lookup(state, request)) is not None:
        return found
    return await _charge(state, request)


def _admin(state: BillingState, request: Request) -> tuple[int, bytes, str]:
    if request.path.startswith(b"/admin/reset"):
        state.reset()
        return 200, b'{"reset":true}', ""
    try:
        state.config.update(json.loads(request.body or b"{}"))
    except (ValueError, KeyError, TypeError) as err:
        return 400, json.dumps({"error": f"bad config: {err}"}).encode(), ""
    return 200, json.dumps(dataclasses.asdict(state.config)).encode(), ""


def _customer(request: Request) -> str | None:
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


async def _charge(state: BillingState, request: Request) -> tuple[int, bytes, str]:
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
            raise _Drop if name == "drop_before" else _Hang
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
        raise _Drop
    return 200, body, ""


async def serve(host: str, port: int, config: MockConfig, on_ready=None) -> None:
    """Run the mock API until cancelled; ``on_ready(port)`` is called once it listens."""
    state = BillingState(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: BillingProtocol(state), host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if on_ready is not None:
        on_ready(bound)
    async with server:
        await server.serve_forever()


def run(host: str = "127.0.0.1", port: int = 0, config: MockConfig | None = None, on_ready=None) -> None:
    """Blocking entry point for ``engine mock-api``; uses uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    try:
        if uvloop is not None:
            uvloop.run(serve(host, port, config or MockConfig(), on_ready))
        else:
            asyncio.run(serve(host, port, config or MockConfig(), on_ready))
    except KeyboardInterrupt:
        pass
