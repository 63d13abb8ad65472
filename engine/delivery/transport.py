"""The only module that talks to libcurl: a pool of reusable easy handles on one CurlMulti.

``configure`` turns a request into handle options, ``harvest`` turns a finished handle
into an :class:`~engine.delivery.policy.Outcome`; :class:`Transport` keeps the handles busy.
The loop is the one of pycurl's ``retriever-multi`` example: take a free handle,
configure, add; ``perform``; read what finished; return the handle; ``select``.
"""

from __future__ import annotations

import resource
import select
import time

import pycurl

from engine.delivery.capture import EXCERPT_BYTES, HEADER_BYTES, Capture, Finished
from engine.delivery.hints import read_hints
from engine.delivery.policy import Outcome
from engine.sender_parts import FILES_BESIDES_SOCKETS, TransportOptions

__all__ = ["EXCERPT_BYTES", "HEADER_BYTES", "Finished", "Transport", "configure", "harvest"]

#: Above this many handles per process the epoll loop is used: ``perform`` + ``select``
#: is cheaper per request for small windows, but libcurl's fdset skips descriptors
#: at or above FD_SETSIZE (1024), which a large window reaches.
EPOLL_ABOVE = 400
_PROTOCOLS = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
#: Longest a Transport's first HTTPS transfer runs alone (s), so that the connections the rest of
#: the window opens after it resume its TLS session instead of each doing a full handshake
#: (the session ticket arrives just after the handshake). It ends sooner, when that transfer does.
TLS_WARMUP = 0.5
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
            capture.token, outcome, capture.started_at, duration_ms, excerpt, f"curl {curl_error}: {message}"
        )
    status = handle.getinfo(pycurl.RESPONSE_CODE)
    # libcurl reads Retry-After as delta-seconds or an HTTP date; 0 when absent, past or unreadable
    retry_after = handle.getinfo(pycurl.RETRY_AFTER) if status in (429, 503) else 0
    hints = read_hints(capture.hints)
    outcome = Outcome(
        http_status=status,
        retry_after=float(retry_after) if retry_after > 0 else None,
        excerpt=excerpt,
        should_retry=hints.should_retry,
    )
    # the whole body, to capture from: only when --capture keeps more than an excerpt, of a 2xx answer
    body = kept if capture.keep > EXCERPT_BYTES and 200 <= status < 300 and not capture.over else None
    return Finished(
        capture.token, outcome, capture.started_at, duration_ms, excerpt, None, body, hints.replayed, hints.quota_rest
    )


class _SelectLoop:
    """``perform`` then ``select`` over curl's fdset: cheapest for a few hundred handles."""

    def __init__(self, multi: pycurl.CurlMulti, wake_fd: int | None):
        self.multi = multi
        self.wake = [] if wake_fd is None else [wake_fd]

    def wait(self, timeout: float) -> None:
        readable, writable, failed = self.multi.fdset()
        curl_ms = self.multi.timeout()
        if curl_ms >= 0:
            timeout = min(timeout, curl_ms / 1000.0)
        if readable or writable or failed or self.wake:
            select.select(readable + self.wake, writable, failed, timeout)
        elif timeout > 0:
            time.sleep(min(timeout, 0.001))

    def drive(self) -> None:
        while self.multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass

    def close(self) -> None:
        pass


class _EpollLoop:
    """``socket_action`` driven by epoll and curl's timer: no limit on descriptor numbers."""

    def __init__(self, multi: pycurl.CurlMulti, wake_fd: int | None):
        self.multi = multi
        self.epoll = select.epoll()
        self.watched: set[int] = set()
        self.wake_fd = wake_fd
        if wake_fd is not None:
            self.epoll.register(wake_fd, select.EPOLLIN)
        self.deadline: float | None = 0.0
        self.ready: list[tuple[int, int]] = []
        multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)

    def _on_socket(self, what: int, fd: int, multi, socketp) -> None:
        if what == pycurl.POLL_REMOVE:
            if fd in self.watched:
                self.watched.discard(fd)
                try:
                    self.epoll.unregister(fd)
                except OSError:
                    pass
            return
        mask = (select.EPOLLIN if what & pycurl.POLL_IN else 0) | (select.EPOLLOUT if what & pycurl.POLL_OUT else 0)
        if fd in self.watched:
            self.epoll.modify(fd, mask)
        else:
            self.epoll.register(fd, mask)
            self.watched.add(fd)

    def _on_timer(self, timeout_ms: int) -> None:
        self.deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0

    def wait(self, timeout: float) -> None:
        if self.deadline is not None:
            timeout = min(timeout, max(0.0, self.deadline - time.monotonic()))
        self.ready = self.epoll.poll(timeout)

    def drive(self) -> None:
        act = self.multi.socket_action
        for fd, events in self.ready:
            if fd == self.wake_fd:
                continue
            flags = (
                (pycurl.CSELECT_IN if events & (select.EPOLLIN | select.EPOLLHUP) else 0)
                | (pycurl.CSELECT_OUT if events & select.EPOLLOUT else 0)
                | (pycurl.CSELECT_ERR if events & select.EPOLLERR else 0)
            )
            act(fd, flags)
        self.ready = []
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.deadline = None
            act(pycurl.SOCKET_TIMEOUT, 0)

    def close(self) -> None:
        self.epoll.close()


def _socket_room() -> int:
    """Sockets this process may open: its open-file limit less the files it holds besides."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else max(1, soft - FILES_BESIDES_SOCKETS)


class Transport:
    """Up to ``size`` concurrent transfers on one CurlMulti, with handles and connections reused.

    ``wake_fd``, if given, ends a wait as soon as it is readable (the worker's inbox),
    so new rows are started the moment they arrive.
    """

    def __init__(self, size: int, options: TransportOptions, method: str = "POST", wake_fd: int | None = None):
        self.multi = pycurl.CurlMulti()
        if options.http2:
            self.multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
            self.multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, H2_STREAMS)
            if size > _socket_room():  # a window larger than the sockets allowed: transfers share them
                self.multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, _socket_room())
        if options.max_host_connections:
            self.multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, options.max_host_connections)
        # TLS sessions and DNS answers live in this multi handle's caches (libcurl >= 8.12), shared
        # by all its transfers: a new connection resumes a TLS session (one round trip, no
        # certificate chain) instead of a full handshake. A CurlShare would add only its locks.
        self.size = size
        self.options = options
        self.method = method
        self.configure = configure if options.resend_harmless else configure_unrepeatable
        loop = _EpollLoop if size > EPOLL_ABOVE else _SelectLoop
        self.loop = loop(self.multi, wake_fd)
        self.free: list[pycurl.Curl] = []
        # each handle's capture: a dict lookup costs 15 ns, an attribute set on a pycurl handle 320
        self.captures: dict[pycurl.Curl, Capture] = {}
        self.active = 0
        self.warm_until: float | None = None  # monotonic; None: nothing started yet, 0: warm

    def has_room(self) -> bool:
        return self.active < self.window(self.size)

    def window(self, limit: int) -> int:
        """Transfers that may be in flight now, at most ``limit``: one until the first transfer has
        started (it says whether the run is over HTTPS) and, over HTTPS, while it opens the
        connection whose TLS session the others will resume."""
        warm_until = self.warm_until
        if warm_until is None or (warm_until and time.monotonic() < warm_until):
            return 1
        return limit

    def start(self, token, url: str, headers: list[str], body: bytes | None) -> None:
        if self.warm_until is None:
            self.warm_until = time.monotonic() + TLS_WARMUP if url.startswith("https:") else 0.0
        handle = self.free.pop() if self.free else self._new_handle()
        capture = self.captures[handle]
        capture.reset(token)
        try:
            self.configure(handle, capture, url, headers, body)
        except BaseException:
            self.free.append(handle)  # nothing was sent; the handle is set afresh by its next row
            raise
        self.multi.add_handle(handle)
        self.active += 1

    def poll(self, timeout: float) -> list[Finished]:
        """Wait up to ``timeout`` seconds for socket activity, drive transfers, return those that ended."""
        if timeout > 0 or self.active:
            self.loop.wait(timeout)
        return self.drive()

    def drive(self) -> list[Finished]:
        self.loop.drive()
        finished = []
        while True:
            queued, ok_list, err_list = self.multi.info_read()
            for handle in ok_list:
                finished.append(self._release(handle, None, None))
            for handle, errno, message in err_list:
                finished.append(self._release(handle, errno, message))
            if not queued:
                if finished:
                    self.warm_until = 0.0
                return finished

    def _new_handle(self) -> pycurl.Curl:
        handle, capture = _new_handle(self.options, self.method)
        self.captures[handle] = capture
        return handle

    def _release(self, handle, errno, message) -> Finished:
        capture = self.captures[handle]
        result = harvest(handle, capture, errno, message)
        self.multi.remove_handle(handle)
        capture.release()
        self.free.append(handle)
        self.active -= 1
        return result

    def close(self) -> None:
        for handle in self.free:
            handle.close()
        self.multi.close()
        self.loop.close()
