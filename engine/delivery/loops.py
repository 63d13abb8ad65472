"""How a :class:`~engine.delivery.transport.Transport` waits for its sockets and drives libcurl.

Two loops, one interface (``wait``, ``drive``, ``close``): ``perform`` + ``select`` over one
CurlMulti for a few hundred handles, and ``socket_action`` driven by epoll and curl's timers for
more, over one or several CurlMulti handles (the shards of a large window) in one epoll set.
"""

from __future__ import annotations

import select
import time

import pycurl

#: Above this many handles per process the epoll loop is used. ``perform`` + ``select`` is cheaper
#: per request for a small window of fast answers, but each turn it looks at every transfer and
#: socket. Counted by ``bench/instructions.py``, against epoll: at 100 in flight 10 % less when nginx
#: answered at once, 20 % more when it answered after 1.6 s (as APIs do); at 200, 3.5 % less and
#: 22 % more; at 400, 8 % and 35 % more. libcurl's fdset also skips descriptors at or above
#: FD_SETSIZE (1024), which a large window reaches.
EPOLL_ABOVE = 200


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
    """``socket_action`` driven by epoll and each multi's timers: no limit on descriptor numbers.

    Every descriptor belongs to the multi that asked for it; a removal from a multi that no
    longer owns the number (closed, then reopened by another) is ignored. Each multi's next timer
    is asked (``timeout``) once a turn instead of being told through a timer callback: libcurl moves
    its earliest timer about twice a transfer (added, then done), and a Python call each time cost
    a large window more than the question asked once a turn."""

    def __init__(self, multis: list[pycurl.CurlMulti], wake_fd: int | None):
        self.epoll = select.epoll()
        self.owner: dict[int, pycurl.CurlMulti] = {}
        if wake_fd is not None:
            self.epoll.register(wake_fd, select.EPOLLIN)
        self.multis = multis
        self.ready: list[tuple[int, int]] = []
        for multi in multis:
            multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)

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

    def wait(self, timeout: float) -> None:
        for multi in self.multis:
            due_ms = multi.timeout()  # -1: no timer; 0: one is due now
            if 0 <= due_ms < timeout * 1000:
                timeout = due_ms / 1000.0
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
        for multi in self.multis:
            if multi.timeout() == 0:  # a timer is due: a transfer added, or one's timeout reached
                multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def close(self) -> None:
        self.epoll.close()
