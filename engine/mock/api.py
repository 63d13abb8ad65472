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
import dataclasses
import itertools
import json
import random
import time
import zlib
from collections import Counter, deque

from engine.mock.charge import Drop, Hang, charge
from engine.mock.config import MockConfig
from engine.mock.lookup import lookup
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
        self.outage_clock = self.started  # --outage-at counts from here: the start, or its last change
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
        elapsed = time.monotonic() - self.outage_clock
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
        except Drop:
            if self.transport is not None:
                self.transport.close()
            return
        except Hang:
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
    return await charge(state, request)


def _admin(state: BillingState, request: Request) -> tuple[int, bytes, str]:
    if request.path.startswith(b"/admin/reset"):
        state.reset()
        return 200, b'{"reset":true}', ""
    try:
        knobs = json.loads(request.body or b"{}")
        state.config.update(knobs)
    except (ValueError, KeyError, TypeError) as err:
        return 400, json.dumps({"error": f"bad config: {err}"}).encode(), ""
    if "outage_at" in knobs:
        state.outage_clock = time.monotonic()
    return 200, json.dumps(dataclasses.asdict(state.config)).encode(), ""


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
