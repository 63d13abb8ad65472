"""The only module that talks to libcurl (with its loops, :mod:`engine.delivery.loops`): a pool of
reusable easy handles on a CurlMulti.

``configure`` turns a request into handle options, ``harvest`` turns a finished handle
into an :class:`~engine.delivery.policy.Outcome`; :class:`Transport` keeps the handles busy.
The loop is the one of pycurl's ``retriever-multi`` example: take a free handle,
configure, add; ``perform``; read what finished; return the handle; ``select``.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable

import pycurl

from engine.delivery.allocator import LARGE_WINDOW, collect_less, map_large_buffers
from engine.delivery.capture import EXCERPT_BYTES, HEADER_BYTES, PREREQ_ABORT, PREREQ_OK, Capture, Finished
from engine.delivery.hints import NO_HINTS, read_hints
from engine.delivery.loops import EPOLL_ABOVE, EpollLoop, SelectLoop
from engine.delivery.policy import Outcome
from engine.sender_parts import FILES_BESIDES_SOCKETS, TransportOptions

__all__ = ["EXCERPT_BYTES", "HEADER_BYTES", "Finished", "Transport", "configure", "harvest"]

#: Transfers per CurlMulti at most over HTTP/1.1: a larger window is spread over several. To start a
#: transfer libcurl looks through every connection its multi holds to the host for one to reuse
#: (``url_match_conn``), so at 4,000 connections in one multi that search was 42 % of a worker's CPU;
#: in multis of 500 libcurl still did 96,000 instructions a request at 4,000 in flight, in multis of
#: 125 60,000, of 64 54,000 (53,000 at 100 in one multi; ``bench/instructions.py --window 4000``).
#: Each multi keeps its own connections, so a transfer starts on the handle that ended last (its multi
#: has the connection just freed); starting them on the multis in turn opened a fifth more connections
#: than the window as the multis' loads drifted apart.
SHARD = 64
_PROTOCOLS = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
#: Longest a Transport's first HTTPS transfer runs alone (s), so that the connections the rest of
#: the window opens after it resume its TLS session instead of each doing a full handshake. It ends
#: sooner: when that transfer does, or once its handshake is done and the session ticket has had
#: time to arrive (TLS 1.3 sends it after the handshake): the handshake's own time again, and at
#: least :data:`TICKET_WAIT`. Against an API that answers in 1.6 s the window no longer waits 0.5 s.
TLS_WARMUP = 0.5
#: Least time (s) the window still waits after the first HTTPS handshake, for its session ticket.
TICKET_WAIT = 0.02
#: Seconds a connection may sit idle and still be reused by a run without keys.
UNKEYED_MAX_IDLE = 2
#: Bytes of the buffer libcurl fills with each request's headers and body (CURLOPT_UPLOAD_BUFFERSIZE):
#: its least. The default, 64 KB, is allocated and zeroed for every request with a body and held
#: while it is in flight: 3.2 GB at 50,000 in flight. A larger body is sent in more pieces.
UPLOAD_BUFFER = 16 * 1024
#: HTTP/2 streams per connection at most (CURLMOPT_MAX_CONCURRENT_STREAMS; the server's own limit
#: still holds). libcurl's default, 100, opens a connection per 100 transfers: 250 TLS connections
#: for a window of 25,000.
H2_STREAMS = 1000


def _new_handle(options: TransportOptions, method: str) -> tuple[pycurl.Curl, Capture]:
    """A handle set up for every request of a run, and the capture its callbacks write into."""
    handle = pycurl.Curl()
    capture = Capture(options.capture_bytes)
    if method == "HEAD":
        handle.setopt(pycurl.NOBODY, 1)
    elif method not in ("GET", "POST"):
        handle.setopt(pycurl.CUSTOMREQUEST, method)
    handle.setopt(pycurl.NOSIGNAL, 1)
    handle.setopt(pycurl.PROTOCOLS, _PROTOCOLS)
    handle.setopt(pycurl.FOLLOWLOCATION, 0)
    handle.setopt(pycurl.CONNECTTIMEOUT_MS, int(options.connect_timeout * 1000))
    handle.setopt(pycurl.TIMEOUT_MS, int(options.timeout * 1000))
    handle.setopt(pycurl.USERAGENT, options.user_agent)
    handle.setopt(pycurl.UPLOAD_BUFFERSIZE, UPLOAD_BUFFER)
    handle.setopt(pycurl.SSL_VERIFYPEER, 1 if options.verify_tls else 0)
    handle.setopt(pycurl.SSL_VERIFYHOST, 2 if options.verify_tls else 0)
    if options.ca_bundle:
        handle.setopt(pycurl.CAINFO, options.ca_bundle)
    if not options.resend_harmless:
        handle.setopt(pycurl.READFUNCTION, capture.read)
        # servers close idle connections after as little as 5 s (Node, Apache); a request sent on
        # one as it closes is unknown, so a connection idle this long is not reused
        handle.setopt(pycurl.MAXAGE_CONN, UNKEYED_MAX_IDLE)
    if options.http2:
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
        handle.setopt(pycurl.PIPEWAIT, 1)  # wait to share a connection rather than open one
    else:
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
    if options.proxy is not None:
        handle.setopt(pycurl.PROXY, options.proxy)  # "" turns libcurl's environment proxies off
    if options.client_cert:
        handle.setopt(pycurl.SSLCERT, options.client_cert)
    if options.client_key:
        handle.setopt(pycurl.SSLKEY, options.client_key)
    if options.client_key_password:
        handle.setopt(pycurl.KEYPASSWD, options.client_key_password)
    # returning None tells libcurl every byte was taken: a huge answer costs no memory
    handle.setopt(pycurl.WRITEFUNCTION, capture.write)
    handle.setopt(pycurl.HEADERFUNCTION, capture.header)
    return handle, capture


def configure(handle: pycurl.Curl, capture: Capture, url: str, headers: list[str], body: bytes | None) -> None:
    """Point a reusable handle at one request (the method was set when the handle was made)."""
    handle.setopt(pycurl.URL, url)
    handle.setopt(pycurl.HTTPHEADER, headers)
    if body is not None:
        handle.setopt(pycurl.POSTFIELDS, body)


def configure_unrepeatable(
    handle: pycurl.Curl, capture: Capture, url: str, headers: list[str], body: bytes | None
) -> None:
    """:func:`configure` for a run without keys: libcurl takes the body through ``capture.read``
    once and cannot send it again. A request without a body gets a connection of its own (no
    reused connection, so nothing to resend on)."""
    handle.setopt(pycurl.URL, url)
    handle.setopt(pycurl.HTTPHEADER, headers)
    alone = 0 if body else 1
    handle.setopt(pycurl.FRESH_CONNECT, alone)
    handle.setopt(pycurl.FORBID_REUSE, alone)
    if body is not None:
        capture.body = body
        handle.setopt(pycurl.POST, 1)
        handle.setopt(pycurl.POSTFIELDSIZE_LARGE, len(body))


assert (PREREQ_OK, PREREQ_ABORT) == (pycurl.PREREQFUNC_OK, pycurl.PREREQFUNC_ABORT)


def harvest(handle: pycurl.Curl, capture: Capture, curl_error: int | None, message: str | None) -> Finished:
    """What a finished handle (and its ``capture``) says about its transfer."""
    duration_ms = handle.getinfo(pycurl.TOTAL_TIME) * 1000.0
    chunks = capture.chunks
    kept = (chunks[0] if len(chunks) == 1 else b"".join(chunks)) if chunks else b""
    excerpt = kept[:EXCERPT_BYTES].decode("utf-8", "replace") if chunks else None
    if curl_error is not None:
        # a body libcurl took went out: an error after that, even a connect error (libcurl
        # reconnecting to send it again), may follow a request the server received
        taken = capture.body_taken > 0
        sent = taken or handle.getinfo(pycurl.REQUEST_SIZE) > 0
        outcome = Outcome(http_status=None, curl_error=curl_error, connected=sent, body_taken=taken)
        if capture.header_bytes > HEADER_BYTES:
            message = f"response headers over {HEADER_BYTES} bytes"
        return Finished(
            capture.token,
            outcome,
            capture.started_at,
            duration_ms,
            excerpt,
            f"curl {curl_error}: {message}",
            fenced=capture.fenced,
        )
    status = handle.getinfo(pycurl.RESPONSE_CODE)
    # libcurl reads Retry-After as delta-seconds or an HTTP date; 0 when absent, past or unreadable
    retry_after = handle.getinfo(pycurl.RETRY_AFTER) if status in (429, 503) else 0
    hints = read_hints(capture.hints) if capture.hints else NO_HINTS
    delay = float(retry_after) if retry_after > 0 else None
    # positional, in Outcome's field order (http_status, curl_error, connected, retry_after, body_taken,
    # excerpt, should_retry): keywords cost twice as much, and this runs once a request
    outcome = Outcome(status, None, True, delay, False, excerpt, hints.should_retry)
    # the whole body, to capture from: only when --capture keeps more than an excerpt, of a 2xx answer
    body = kept if capture.keep > EXCERPT_BYTES and 200 <= status < 300 and not capture.over else None
    return Finished(
        capture.token, outcome, capture.started_at, duration_ms, excerpt, None, body, hints.replayed, hints.quota_rest
    )


def _socket_room() -> int:
    """Sockets this process may open: its open-file limit less the files it holds besides."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else max(1, soft - FILES_BESIDES_SOCKETS)


def _shards(size: int, options: TransportOptions) -> int:
    """CurlMulti handles for a window of ``size``: one, but for a large HTTP/1.1 window with no cap on
    connections per host (HTTP/2 holds a few connections; a cap holds per multi)."""
    if options.http2 or options.max_host_connections or size <= EPOLL_ABOVE:
        return 1
    return math.ceil(size / SHARD)


def _new_multi(size: int, options: TransportOptions) -> pycurl.CurlMulti:
    multi = pycurl.CurlMulti()
    if options.http2:
        multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, H2_STREAMS)
        if size > _socket_room():  # a window larger than the sockets allowed: transfers share them
            multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, _socket_room())
    if options.max_host_connections:
        multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, options.max_host_connections)
    return multi


def _tls_share() -> pycurl.CurlShare:
    share = pycurl.CurlShare()
    share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_SSL_SESSION)
    share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_DNS)
    return share


class Transport:
    """Up to ``size`` concurrent transfers on one CurlMulti (several for a large HTTP/1.1 window, see
    :data:`SHARD`), with handles and connections reused.

    ``wake_fd``, if given, ends a wait as soon as it is readable (the worker's inbox),
    so new rows are started the moment they arrive.
    """

    def __init__(self, size: int, options: TransportOptions, method: str = "POST", wake_fd: int | None = None):
        if size > LARGE_WINDOW:  # before any handle: only the pages of a send buffer written stay resident
            map_large_buffers(UPLOAD_BUFFER)
        collect_less()
        # TLS sessions and DNS answers live in a multi handle's caches (libcurl >= 8.12), shared by all
        # its transfers: a new connection resumes a TLS session (one round trip, no certificate chain)
        # instead of a full handshake. Several multis share one cache through a CurlShare.
        self.multis = [_new_multi(size, options) for _ in range(_shards(size, options))]
        self.share = _tls_share() if len(self.multis) > 1 else None
        self.size = size
        self.options = options
        self.method = method
        self.configure = configure if options.resend_harmless else configure_unrepeatable
        loop = EpollLoop if size > EPOLL_ABOVE else SelectLoop
        self.loop = loop(self.multis, wake_fd)
        self.free: list[pycurl.Curl] = []  # idle handles, the last to end on top
        # each handle's capture: a dict lookup costs 15 ns, an attribute set on a pycurl handle 320
        self.captures: dict[pycurl.Curl, Capture] = {}
        self.home: dict[pycurl.Curl, int] = {}  # the multi a handle is added to, always the same
        self.turn = 0  # the multi the next new handle goes to (in turn)
        self.active = 0
        self.warm_until: float | None = None  # monotonic; None: nothing started yet, 0: warm
        self.warming: pycurl.Curl | None = None  # the first HTTPS transfer, until its handshake is done
        self.warm_started = 0.0  # monotonic: when it started

    def has_room(self) -> bool:
        return self.active < self.window(self.size)

    def window(self, limit: int) -> int:
        """Transfers that may be in flight now, at most ``limit``: one until the first transfer has
        started (it says whether the run is over HTTPS) and, over HTTPS, while it opens the
        connection whose TLS session the others will resume."""
        warm_until = self.warm_until
        if warm_until is None:
            return 1
        if warm_until:
            if self.warming is not None:
                warm_until = self._ticket_due(self.warming, warm_until)
            if time.monotonic() < warm_until:
                return 1
        return limit

    def _ticket_due(self, first: pycurl.Curl, warm_until: float) -> float:
        """When the window opens: once the first transfer's TLS handshake is done, as long again (at least
        :data:`TICKET_WAIT`) after it, for the session ticket to arrive; until then, ``warm_until``."""
        handshake = first.getinfo(pycurl.APPCONNECT_TIME_T) / 1e6  # seconds after it started; 0 until done
        if handshake:
            self.warming = None
            self.warm_until = warm_until = min(warm_until, self.warm_started + handshake + max(handshake, TICKET_WAIT))
        return warm_until

    def start(
        self, token, url: str, headers: list[str], body: bytes | None, guard: Callable[[], bool] | None = None
    ) -> None:
        """Start a transfer. ``guard`` (a claim's fence), if given, is asked again just before libcurl sends
        the request: a False then aborts it unsent (its :class:`Finished` says ``fenced``)."""
        first = self.warm_until is None
        if first:
            self.warm_started = time.monotonic()
            self.warm_until = self.warm_started + TLS_WARMUP if url.startswith("https:") else 0.0
        free = self.free
        handle = free.pop() if free else self._new_handle()
        if first and self.warm_until:
            self.warming = handle
        capture = self.captures[handle]
        capture.reset(token, guard)
        if guard is not None:  # only on nodes: a local pass holds no claim, and pays nothing for this
            handle.setopt(pycurl.PREREQFUNCTION, capture.prereq)
        try:
            self.configure(handle, capture, url, headers, body)
        except BaseException:
            free.append(handle)  # nothing was sent; the handle is set afresh by its next row
            raise
        self.multis[self.home[handle]].add_handle(handle)
        self.active += 1

    def poll(self, timeout: float) -> list[Finished]:
        """Wait up to ``timeout`` seconds for socket activity, drive transfers, return those that ended."""
        if timeout > 0 or self.active:
            self.loop.wait(timeout)
        return self.drive()

    def drive(self) -> list[Finished]:
        self.loop.drive()
        finished: list[Finished] = []
        for multi in self.multis:
            queued = 1
            while queued:
                queued, ok_list, err_list = multi.info_read()
                for handle in ok_list:
                    finished.append(self._release(handle, None, None))
                for handle, errno, message in err_list:
                    finished.append(self._release(handle, errno, message))
        if finished:
            self.warm_until, self.warming = 0.0, None
        return finished

    def _new_handle(self) -> pycurl.Curl:
        """A handle for one more transfer than ever before, on the multis in turn."""
        shard = self.turn
        self.turn = (shard + 1) % len(self.multis)
        handle, capture = _new_handle(self.options, self.method)
        if self.share is not None:
            handle.setopt(pycurl.SHARE, self.share)
        self.captures[handle] = capture
        self.home[handle] = shard
        return handle

    def _release(self, handle, errno, message) -> Finished:
        capture = self.captures[handle]
        result = harvest(handle, capture, errno, message)
        self.multis[self.home[handle]].remove_handle(handle)
        capture.release()
        self.free.append(handle)
        self.active -= 1
        return result

    def close(self) -> None:
        for handle in self.free:
            handle.close()
        for multi in self.multis:
            multi.close()
        if self.share is not None:
            self.share.close()
        self.loop.close()
