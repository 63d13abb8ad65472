"""Whether a sender may still start a transfer for a claim it holds: a lease kept by its own monotonic clock.

A lease in the ledger is not a lock: a node frozen past it (VM pause, SIGSTOP, a long GC) wakes
up believing it still holds its chunk while another node sends the same rows. So before each
transfer starts, the sender asks its :class:`Fence`: was the claim renewed successfully within
the lease, less a safety margin, as measured from *before* that renewal was asked for? After
a freeze the answer is no, whatever the ledger says, and nothing more starts. A renewal the
ledger refuses (the claim was taken over) ends the claim at once.

The lease is the node's ``--stall-timeout``: the coordinator queues a chunk again only after its
last heartbeat (database clock) + that lease + ``--timeout`` + a margin, so what this sender
started before its fence closed has timed out before another node may start it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: The safety margin taken off the lease (s), at most a quarter of it.
MARGIN = 1.0
#: How often the claim is renewed (s), at most a third of the usable lease.
RENEW_EVERY = 1.0


class Fence:
    """A claim's validity by the holder's monotonic clock; ``renew()`` says True (renewed), False (the
    claim is gone) or None (the ledger could not be asked: the lease runs down)."""

    def __init__(
        self,
        lease: float,
        renew: Callable[[], bool | None] = lambda: True,
        *,
        renewed_at: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.clock = clock
        self.renew_call = renew
        self.usable = lease - min(MARGIN, lease / 4)
        self.every = min(RENEW_EVERY, self.usable / 3)
        self.renewed_at = clock() if renewed_at is None else renewed_at  # asked for before the claim was made
        self.asked_at = self.renewed_at
        self.lost = False

    def __repr__(self) -> str:
        return f"Fence(usable={self.usable:g}s, renewed {self.clock() - self.renewed_at:.2f}s ago, lost={self.lost})"

    def valid(self) -> bool:
        """May a transfer start now?"""
        return not self.lost and self.clock() - self.renewed_at < self.usable

    def keep(self) -> None:
        """Renew the claim when it is due (the sender calls this every turn of its loop)."""
        if self.lost or self.clock() - self.asked_at < self.every:
            return
        asked = self.asked_at = self.clock()
        answer = self.renew_call()
        if answer is True:
            self.renewed_at = asked
        elif answer is False:
            self.lost = True
