"""How a :class:`~engine.delivery.transport.Transport` waits for its sockets and drives libcurl.

Two loops, one interface (``wait``, ``drive``, ``close``): ``perform`` + ``select`` over one
CurlMulti for a few hundred handles, and ``socket_action`` driven by epoll and curl's timers for
more, over one or several CurlMulti handles (the shards of a large window) in one epoll set.
"""

from __future__ import annotations

import select
import time

import pycurl

#: Above this many handles per process the epoll loop is used: ``perform`` + ``select``
#: is cheaper per request for small windows, but libcurl's fdset skips descriptors
#: at or above FD_SETSIZE (1024), which a large window reaches.
EPOLL_ABOVE = 400


class SelectLoop:
    """``perform`` then ``select`` over curl's fdset: cheapest for a few hundred handles."""

    def __init__(self, multis: list[pycurl.CurlMulti], wake_fd: int | None):
        (self.multi,) = multis
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


class EpollLoop:
    """``socket_action`` driven by epoll and each multi's timer: no limit on descriptor numbers.

    Every descriptor belongs to the multi that asked for it; a removal from a multi that no
    longer owns the number (closed, then reopened by another) is ignored."""

    def __init__(self, multis: list[pycurl.CurlMulti], wake_fd: int | None):
        self.epoll = select.epoll()
        self.owner: dict[int, pycurl.CurlMulti] = {}
        if wake_fd is not None:
            self.epoll.register(wake_fd, select.EPOLLIN)
        # monotonic time each multi wants its timeout action (0: at once, to start; None: never)
        self.deadlines: dict[pycurl.CurlMulti, float | None] = {}
        self.ready: list[tuple[int, int]] = []
        for multi in multis:
            self.deadlines[multi] = 0.0
            multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
            multi.setopt(pycurl.M_TIMERFUNCTION, self._timer_of(multi))

    def _on_socket(self, what: int, fd: int, multi, socketp) -> None:
        if what == pycurl.POLL_REMOVE:
            if self.owner.get(fd) is multi:
                del self.owner[fd]
                try:
                    self.epoll.unregister(fd)
                except OSError:
                    pass
            return
        mask = (select.EPOLLIN if what & pycurl.POLL_IN else 0) | (select.EPOLLOUT if what & pycurl.POLL_OUT else 0)
        if fd in self.owner:
            self.epoll.modify(fd, mask)
        else:
            self.epoll.register(fd, mask)
        self.owner[fd] = multi

    def _timer_of(self, multi: pycurl.CurlMulti):
        deadlines = self.deadlines

        def on_timer(timeout_ms: int) -> None:
            deadlines[multi] = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0

        return on_timer

    def wait(self, timeout: float) -> None:
        due = [deadline for deadline in self.deadlines.values() if deadline is not None]
        if due:
            timeout = min(timeout, max(0.0, min(due) - time.monotonic()))
        self.ready = self.epoll.poll(timeout)

    def drive(self) -> None:
        owner = self.owner
        for fd, events in self.ready:
            multi = owner.get(fd)
            if multi is None:  # the wake-up descriptor, or a socket its multi let go of since
                continue
            flags = (
                (pycurl.CSELECT_IN if events & (select.EPOLLIN | select.EPOLLHUP) else 0)
                | (pycurl.CSELECT_OUT if events & select.EPOLLOUT else 0)
                | (pycurl.CSELECT_ERR if events & select.EPOLLERR else 0)
            )
            multi.socket_action(fd, flags)
        self.ready = []
        now = time.monotonic()
        for multi, deadline in self.deadlines.items():
            if deadline is not None and now >= deadline:
                self.deadlines[multi] = None
                multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def close(self) -> None:
        self.epoll.close()
