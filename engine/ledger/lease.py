"""One holder per run: who holds a run's lease, when it is stale, and what a taker must wait for.

A pass holds its run's lease in the ledger and renews it (a heartbeat) while it sends.
A second pass of the same run refuses while the holder lives. A holder that died
(kill -9, power loss) leaves its lease behind: the next pass takes it over, and every
row the dead pass may have had in flight — any row up to its *dispatch frontier*, the
last position in dispatch order it had read — waits until the dead pass's last
heartbeat plus its attempt timeout, so no request is resent while the original may
still be in progress at the API. The frontier is written before rows beyond it are
handed out, so it is always ahead of what was sent.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass

#: How often a pass renews its lease (s).
HEARTBEAT_INTERVAL = 1.0
#: A lease not renewed for this long is stale even if its holder runs on another host (s).
STALE_AFTER = 30.0
#: Added to the dead pass's attempt timeout before its rows may be sent again (s).
HOLD_MARGIN = 1.0


def chunk_silent_for(lease: float, timeout: float) -> float:
    """How long a chunk's holder must have been silent (database clock) before another node may take it:
    its lease (the node stops starting rows within it, :class:`~engine.delivery.fence.Fence`), then the
    ``timeout`` of a request it started just before, then a margin."""
    return lease + timeout + HOLD_MARGIN


@dataclass(frozen=True)
class Holder:
    """This process, as named in a lease."""

    host: str
    pid: int
    token: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(4))

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"


@dataclass(frozen=True)
class Hold:
    """Rows up to ``frontier`` (in dispatch order) may not be sent before ``until`` (wall clock)."""

    until: float
    frontier: tuple[float, int]

    def covers(self, priority: float, rid: int) -> bool:
        return not is_after((priority, rid), self.frontier)


def is_after(position: tuple[float, int], other: tuple[float, int]) -> bool:
    """Is ``position`` later in dispatch order (priority descending, then rid) than ``other``?"""
    return position[0] < other[0] or (position[0] == other[0] and position[1] > other[1])


def later(a: tuple[float, int] | None, b: tuple[float, int] | None) -> tuple[float, int] | None:
    if a is None or b is None:
        return a or b
    return a if is_after(a, b) else b


def holder_alive(lease: dict, now: float | None = None) -> bool:
    """Does the process named in ``lease`` still hold it?

    A lease released after an unclean end has pid 0. On this host, a pid that no longer
    exists is dead at once; otherwise a lease is alive while its heartbeat is fresh.
    """
    now = time.time() if now is None else now
    if not lease["pid"]:
        return False
    if lease["host"] == socket.gethostname() and not _pid_exists(lease["pid"]):
        return False
    return now - lease["heartbeat_at"] < STALE_AFTER


def describe(lease: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    return f"pid {lease['pid']} on {lease['host']} (last heartbeat {max(0.0, now - lease['heartbeat_at']):.0f} s ago)"


def hold_after(lease: dict) -> Hold | None:
    """What a pass taking over ``lease`` (left by a pass that did not end cleanly) must respect."""
    if lease["frontier_rid"] is None:
        return None
    return Hold(
        lease["heartbeat_at"] + lease["timeout"] + HOLD_MARGIN, (lease["frontier_priority"], lease["frontier_rid"])
    )


def _pid_exists(pid: int) -> bool:
    """Is ``pid`` a live process (a zombie, killed but not yet reaped, is not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
