"""The transport against a real server on 127.0.0.1: what it keeps of an answer, and what that costs.

Memory is measured in a child process that drives a :class:`~engine.delivery.transport.Transport`
the way a worker does (start while there is room, ``poll``, repeat), so the peak RSS is
the transport's alone. Run as a script, this module is that child.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import pytest

from engine.delivery import transport as transport_module
from engine.delivery.policy import UNKNOWN, RetryPolicy
from engine.delivery.transport import EXCERPT_BYTES, HEADER_BYTES, Transport
from engine.sender_parts import TransportOptions

MB = 1024 * 1024
#: 199 ASCII bytes then a two-byte character across the excerpt's end, sent in three pieces.
SPLIT_BODY = b"a" * 150 + b"b" * 49 + "\u00e9".encode() + b"tail " * 100
_ZEROS = memoryview(bytes(MB))
#: The client ends of the connections that asked for ``/jitter``.
CONNECTIONS: set[tuple[str, int]] = set()


class Handler(BaseHTTPRequestHandler):
    """``/bytes/N``: N bytes of body; ``/split``: SPLIT_BODY in pieces; ``/short``; ``/empty``;
    ``/endless-headers``: header lines until the client hangs up; ``/retry-after/V``: 429 with Retry-After V."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if match := re.fullmatch(r"/bytes/(\d+)", self.path):
            self._stream(int(match[1]))
        elif self.path == "/split":
            self._answer(SPLIT_BODY, pieces=(0, 150, 200))
        elif self.path == "/short":
            self._answer("paid \u2713".encode())
        elif self.path == "/empty":
            self._answer(b"")
        elif self.path == "/endless-headers":
            self._endless_headers()
        elif self.path == "/jitter":  # answered after 0-20 ms, so transfers end out of order
            CONNECTIONS.add(self.client_address)
            time.sleep(random.random() / 50)
            self._answer(b"ok")
        elif self.path.startswith("/retry-after/"):
            self.send_response(429)
            self.send_header("Retry-After", unquote(self.path.removeprefix("/retry-after/")))
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    def _answer(self, body: bytes, pieces=(0,)) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for start, end in zip(pieces, (*pieces[1:], len(body)), strict=True):
            self.wfile.write(body[start:end])
            self.wfile.flush()
            time.sleep(0.01)  # each piece reaches the client as a write of its own

    def _stream(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        while size > 0:
            self.wfile.write(_ZEROS[: min(size, MB)])
            size -= MB

    def _endless_headers(self) -> None:
        self.close_connection = True
        line = b"X-Padding: " + b"z" * 1000 + b"\r\n"
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while True:
                self.wfile.write(line * 16)
        except OSError:
            pass

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a whole window connects at once; the default backlog of 5 drops some


@pytest.fixture(scope="module")
def server():
    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def fetch_all(urls: list[str], window: int) -> list:
    """Every URL through one Transport with at most ``window`` in flight, as a worker drives it."""
    transport = Transport(window, TransportOptions(connect_timeout=10, timeout=30), "GET")
    pending, finished = list(enumerate(urls)), []
    try:
        while len(finished) < len(urls):
            while pending and transport.has_room():
                token, url = pending.pop()
                transport.start(token, url, [], None)
            finished += transport.poll(0.05)
    finally:
        transport.close()
    return sorted(finished, key=lambda done: done.token)


def measure_in_child(urls: list[str], window: int) -> dict:
    """Run :func:`fetch_all` in a fresh interpreter; its RSS before and at its peak, and what came back."""
    done = subprocess.run([sys.executable, __file__, str(window), *urls], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_huge_answers_cost_a_transfer_no_more_than_its_excerpt(server):
    report = measure_in_child([f"{server}/bytes/{20 * MB}"] * 20, window=10)
    assert report["statuses"] == [200] * 20
    assert report["excerpt_lengths"] == [EXCERPT_BYTES] * 20
    grown_mb = (report["peak_kb"] - report["baseline_kb"]) / 1024
    assert grown_mb < 100, f"400 MB of answers, 10 in flight, grew the process by {grown_mb:.0f} MB"


def test_the_excerpt_is_the_first_bytes_decoded_as_before(server):
    split, short, empty = fetch_all([f"{server}/split", f"{server}/short", f"{server}/empty"], window=3)
    # the character cut at the excerpt's end decodes to U+FFFD, as when whole bodies were kept and cut
    assert split.excerpt == SPLIT_BODY[:EXCERPT_BYTES].decode("utf-8", "replace") == "a" * 150 + "b" * 49 + "\ufffd"
    assert short.excerpt == "paid \u2713"
    assert empty.excerpt is None
    assert [done.outcome.http_status for done in (split, short, empty)] == [200, 200, 200]


def test_endless_headers_end_the_transfer_at_the_header_cap(server):
    report = measure_in_child([f"{server}/endless-headers"] * 100, window=100)
    assert report["errors"] == [f"curl 23: response headers over {HEADER_BYTES} bytes"] * 100
    grown_mb = (report["peak_kb"] - report["baseline_kb"]) / 1024
    assert grown_mb < 20, f"100 answers of endless headers grew the process by {grown_mb:.0f} MB"


def test_retry_after_is_read_as_seconds_from_delta_seconds_and_http_dates(server):
    values = [
        "120",
        "0",
        formatdate(time.time() + 90, usegmt=True),
        formatdate(time.time() - 90, usegmt=True),
        "soon",
        "-5",
    ]
    finished = fetch_all([f"{server}/retry-after/{quote(value)}" for value in values], window=len(values))
    seconds, zero, later, earlier, *garbage = [done.outcome.retry_after for done in finished]
    assert [done.outcome.http_status for done in finished] == [429] * len(values)
    assert seconds == 120.0
    assert 85 <= later <= 91
    assert zero is None and earlier is None and garbage == [None, None]


class DropsSecondRequest(BaseHTTPRequestHandler):
    """Answers the first POST of each connection; reads the second, counts it, and hangs up
    without a word: the keep-alive connection a client reuses dies with the request received."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received[body] += 1
        self.served = getattr(self, "served", 0) + 1
        if self.served == 1:
            self.server.connections += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def dropping_server():
    httpd = Server(("127.0.0.1", 0), DropsSecondRequest)
    httpd.received, httpd.connections = Counter(), 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def post_all(url: str, bodies: list[bytes], options: TransportOptions, window: int = 4) -> list:
    """Every body POSTed to ``url`` through one Transport, as a worker drives it."""
    transport = Transport(window, options, "POST")
    pending, finished = list(enumerate(bodies)), []
    try:
        while len(finished) < len(bodies):
            while pending and transport.has_room():
                token, body = pending.pop()
                transport.start(token, url, ["Content-Type: application/json"], body)
            finished += transport.poll(0.05)
    finally:
        transport.close()
    return finished


@pytest.mark.parametrize("size", [100, 200_000])  # one read, and a body libcurl reads in pieces
def test_without_keys_libcurl_cannot_resend_a_request_on_its_own(dropping_server, size):
    """Over reused connections that die with the request received, no body reaches the server twice:
    the request libcurl would resend fails (curl 65) and is recorded as possibly sent."""
    url = f"http://127.0.0.1:{dropping_server.server_address[1]}/charge"
    bodies = [json.dumps({"id": i, "pad": "x" * size}).encode() for i in range(200)]
    unkeyed = TransportOptions(connect_timeout=10, timeout=30, resend_harmless=False)
    finished = post_all(url, bodies, unkeyed)
    assert max(dropping_server.received.values()) == 1 and len(dropping_server.received) == 200
    failed = [done for done in finished if done.outcome.curl_error is not None]
    assert failed and {done.outcome.curl_error for done in failed} <= {52, 65}
    assert all(
        done.outcome.connected and RetryPolicy(idempotent=False).classify(done.outcome) == UNKNOWN for done in failed
    )
    assert dropping_server.connections < 200  # connections are reused all the same
    answered = {bodies[done.token] for done in finished if done.outcome.http_status == 200}
    assert len(answered) + len(failed) == 200


def test_with_keys_libcurl_resends_on_its_own(dropping_server):
    """What the read callback prevents: the same server, bodies given as POSTFIELDS (as keyed runs do)."""
    url = f"http://127.0.0.1:{dropping_server.server_address[1]}/charge"
    post_all(
        url, [json.dumps({"id": i}).encode() for i in range(200)], TransportOptions(connect_timeout=10, timeout=30)
    )
    assert max(dropping_server.received.values()) >= 2  # sent again, up to 5 times


def peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux carries that across
    exec from the forked parent (a large pytest worker), so it would say the parent's size."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def main(window: int, urls: list[str]) -> None:
    baseline_kb = peak_rss_kb()
    finished = fetch_all(urls, window)
    print(
        json.dumps(
            {
                "baseline_kb": baseline_kb,
                "peak_kb": peak_rss_kb(),
                "statuses": [done.outcome.http_status for done in finished],
                "errors": [done.error for done in finished],
                "excerpt_lengths": [len(done.excerpt or "") for done in finished],
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])


def test_a_large_window_is_spread_over_several_multis_and_every_transfer_ends_once(server, monkeypatch):
    """Over HTTP/1.1 a window above the select loop's is cut into CurlMulti handles of SHARD transfers
    (libcurl's search for a reusable connection walks all of a multi's): all of them carry transfers,
    each transfer comes back once, answered, and, though they end in no particular order, the window
    never opens more connections than it holds transfers (each multi keeps its own connections)."""
    monkeypatch.setattr(transport_module, "SHARD", 100)
    window, count = 450, 2700
    transport = Transport(window, TransportOptions(connect_timeout=10, timeout=30), "GET")
    assert len(transport.multis) == 5
    CONNECTIONS.clear()
    pending, finished, used = list(range(count)), [], Counter()
    try:
        while len(finished) < count:
            while pending and transport.has_room():
                transport.start(pending.pop(), f"{server}/jitter", [], None)
            finished += transport.poll(0.05)
            used.update(transport.home.values())
    finally:
        transport.close()
    assert sorted(done.token for done in finished) == list(range(count))
    assert {done.outcome.http_status for done in finished} == {200}
    assert sorted(used) == [0, 1, 2, 3, 4]
    assert len(CONNECTIONS) <= window
    assert (
        Transport(window, TransportOptions(connect_timeout=10, timeout=30, http2=True), "GET").multis[1:] == []
    )  # HTTP/2: one multi
