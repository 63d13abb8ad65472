"""The question asked of a pipe between the coordinator and a worker at every turn: does a message
wait at its reading end?"""

from __future__ import annotations

import select
from multiprocessing.connection import Connection


class MessageWaits:
    """Whether a message, or the pipe's end (which ``recv`` then reports), waits at ``reader``.

    ``Connection.poll`` builds, registers and closes a selector for each question (3.3 µs); a poll
    object kept for the pipe answers in 0.4. A worker asks it every turn of its loop, and the
    coordinator after every message it receives.
    """

    def __init__(self, reader: Connection):
        self._poll = select.poll()
        self._poll.register(reader.fileno(), select.POLLIN)

    def __call__(self, timeout: float = 0.0) -> bool:
        """True once a message waits, waiting up to ``timeout`` seconds for one."""
        return bool(self._poll.poll(timeout * 1000))
