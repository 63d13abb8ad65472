"""What one transfer leaves behind while it runs and once it ends, in plain Python (no libcurl).

A :class:`Capture` is a handle's callbacks' memory, bounded whatever the server sends; a
:class:`Finished` is what :func:`engine.delivery.transport.harvest` makes of it. The
coordinator's record code reads :class:`Finished` without loading libcurl.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

from engine.delivery.hints import HINT_HEADERS, HINT_INITIALS
from engine.delivery.policy import Outcome

#: Longest response excerpt kept per attempt (bytes); the rest of an answer is dropped as it arrives.
EXCERPT_BYTES = 200
#: Most response-header bytes taken per attempt; past them the transfer is aborted (curl error 23).
#: Headers are never kept, but libcurl holds up to 300 KB of them per answer: on every handle of a
#: large window a hostile server could make that hundreds of MB.
HEADER_BYTES = 64 * 1024
#: What :meth:`Capture.prereq` answers libcurl: send, or abort the transfer unsent (``CURL_PREREQFUNC_*``).
PREREQ_OK, PREREQ_ABORT = 0, 1


class Finished(NamedTuple):
    """A transfer that ended: whose it was, what came back, and when it started."""

    token: Any
    outcome: Outcome
    started_at: float
    duration_ms: float
    excerpt: str | None
    error: str | None
    #: The body of a 2xx answer when ``--capture`` is given (None past the bound it is kept to).
    body: bytes | None = None
    #: The answer said ``Idempotent-Replayed: true``.
    replayed: bool = False
    #: Seconds until the API's quota resets, when its ``RateLimit`` headers say none is left.
    quota_rest: float | None = None
    #: Never sent: the sender's fence no longer held when libcurl was about to send it (:meth:`Capture.prereq`).
    fenced: bool = False


class Capture:
    """Per-handle state of one transfer: whose it is, when it started, the answer's first bytes.

    Memory per transfer is bounded whatever the server sends: ``keep`` bytes of body (EXCERPT_BYTES,
    or more to capture values from), a count of header bytes, the few hint headers' values.
    """

    __slots__ = (
        "body",
        "body_taken",
        "chunks",
        "fenced",
        "guard",
        "header_bytes",
        "hints",
        "keep",
        "kept",
        "over",
        "started_at",
        "token",
    )

    def __init__(self, keep: int = EXCERPT_BYTES):
        self.chunks: list[bytes] = []
        self.keep = max(keep, EXCERPT_BYTES)
        self.kept = 0
        self.over = False  # the answer had more than ``keep`` bytes
        self.hints: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.token = None
        self.started_at = 0.0
        self.body = b""  # the body libcurl reads through ``read`` (runs without keys), until it is taken
        self.body_taken = 0
        self.guard: Callable[[], bool] | None = None  # asked by :meth:`prereq`, if the handle has it
        self.fenced = False

    def reset(self, token, guard: Callable[[], bool] | None = None) -> None:
        self.chunks.clear()
        self.kept = 0
        self.over = False
        self.hints.clear()
        self.header_bytes = 0
        self.body_taken = 0
        self.token = token
        self.guard = guard
        self.fenced = False
        self.started_at = time.time()

    def prereq(self, *_address) -> int:
        """libcurl's last call before it sends the request, once connected: the ``guard`` (a claim's fence)
        is asked again. A process frozen between starting the transfer and sending it (SIGSTOP, a VM
        pause) wakes up here with the fence closed: the request is not sent, and the row is another's."""
        if self.guard is None or self.guard():
            return PREREQ_OK
        self.fenced = True
        return PREREQ_ABORT

    def release(self) -> None:
        """Drop what the ended transfer held (its row, its excerpt) while the handle waits for another."""
        self.token = None
        self.chunks.clear()
        self.body = b""

    def read(self, size: int) -> bytes:
        """libcurl's read callback: the body, once. With no seek callback libcurl cannot rewind it,
        so it cannot send the request a second time on its own."""
        start = self.body_taken
        piece = self.body if start == 0 and len(self.body) <= size else self.body[start : start + size]
        self.body_taken = start + len(piece)
        return piece

    def write(self, data: bytes) -> None:
        """libcurl's write callback: keep the first ``keep`` bytes, discard the rest as it arrives."""
        if self.kept < self.keep:
            piece = data[: self.keep - self.kept]
            self.chunks.append(piece)
            self.kept += len(piece)
            if len(piece) < len(data):
                self.over = True
        elif data:
            self.over = True

    def header(self, line: bytes) -> int | None:
        """libcurl's header callback: count the bytes, keep only the hints' values
        (:mod:`engine.delivery.hints`); returning 0 past HEADER_BYTES aborts."""
        self.header_bytes += len(line)
        if self.header_bytes > HEADER_BYTES:
            return 0
        if line and line[0] in HINT_INITIALS:
            name, colon, value = line.partition(b":")
            name = name.strip().lower()
            if colon and name in HINT_HEADERS:
                self.hints[name] = value.strip()
        return None
