"""What one transfer leaves behind while it runs and once it ends, in plain Python (no libcurl).

A :class:`Capture` is a handle's callbacks' memory, bounded whatever the server sends; a
:class:`Finished` is what :func:`engine.delivery.transport.harvest` makes of it. The
coordinator's record code reads :class:`Finished` without loading libcurl.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from engine.delivery.policy import Outcome

#: Longest response excerpt kept per attempt (bytes); the rest of an answer is dropped as it arrives.
EXCERPT_BYTES = 200
#: Most response-header bytes taken per attempt; past them the transfer is aborted (curl error 23).
#: Headers are never kept, but libcurl holds up to 300 KB of them per answer: on every handle of a
#: large window a hostile server could make that hundreds of MB.
HEADER_BYTES = 64 * 1024


class Finished(NamedTuple):
    """A transfer that ended: whose it was, what came back, and when it started."""

    token: Any
    outcome: Outcome
    started_at: float
    duration_ms: float
    excerpt: str | None
    error: str | None


class Capture:
    """Per-handle state of one transfer: whose it is, when it started, the answer's first bytes.

    Memory per transfer is bounded whatever the server sends: EXCERPT_BYTES of body, a
    count of header bytes.
    """

    __slots__ = ("body", "body_taken", "chunks", "header_bytes", "kept", "started_at", "token")

    def __init__(self):
        self.chunks: list[bytes] = []
        self.kept = 0
        self.header_bytes = 0
        self.token = None
        self.started_at = 0.0
        self.body = b""  # the body libcurl reads through ``read`` (runs without keys), until it is taken
        self.body_taken = 0

    def reset(self, token) -> None:
        self.chunks.clear()
        self.kept = 0
        self.header_bytes = 0
        self.body_taken = 0
        self.token = token
        self.started_at = time.time()

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
        """libcurl's write callback: keep the first EXCERPT_BYTES, discard the rest as it arrives."""
        if self.kept < EXCERPT_BYTES:
            piece = data[: EXCERPT_BYTES - self.kept]
            self.chunks.append(piece)
            self.kept += len(piece)

    def header(self, line: bytes) -> int | None:
        """libcurl's header callback: count the bytes, keep none; returning 0 past HEADER_BYTES aborts."""
        self.header_bytes += len(line)
        return 0 if self.header_bytes > HEADER_BYTES else None
