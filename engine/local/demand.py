"""How many rows a worker asks the coordinator for: its window, plus a reserve sized by measurement.

The reserve covers what the worker finishes during a few round trips to the coordinator
(which may be busy writing the ledger), so a fast server never finds the window empty,
while against a slow one no rows idle in one worker's queue at the end of a pass. A worker
asks once it is down to its reserve, for what it finishes in :data:`ASK_EVERY` on top.
"""

from __future__ import annotations

import time

#: A worker keeps queued, beyond its window, the rows it expects to finish during this many
#: coordinator round trips (measured), so the window never waits for rows...
RESERVE_ROUND_TRIPS = 3
#: ...but never more than this many chunks, so few rows sit idle in one worker at the end of a pass,
RESERVE_CHUNKS = 5
#: ...and none at all when it would be smaller than this: against a slow API the round trip is
#: negligible, and a row held back here can cost a whole extra latency at the end of a pass.
RESERVE_MIN = 10
#: Once down to its reserve, a worker asks for what it finishes in this many seconds on top (s): fewer,
#: larger messages both ways, and fewer loop turns woken by rows arriving. Asking each time half
#: the reserve was used sent about 90 rows a message against nginx; this sends about 200, and took
#: 2-3 µs of worker CPU a request less (bench/RESULTS.md, round 3).
ASK_EVERY = 0.02
#: Transfers finished are counted over windows of this many seconds for the finishing rate.
RATE_WINDOW = 0.25


class Demand:
    """One worker's asking: at most one request for rows outstanding, sized by :meth:`want`."""

    def __init__(self, window: int, chunk_size: int, now: float | None = None):
        self.window, self.chunk_size = window, chunk_size
        self.asked = False
        self.asked_at = 0.0
        self.round_trip = 0.01  # seconds from asking for rows to having them (moving average)
        self.rate = 0.0  # transfers finished per second (moving average)
        self.finished = 0
        self.rate_since = time.monotonic() if now is None else now
        #: The coordinator answered with no rows: the pass is ending, ask only for free slots.
        self.reserve_refused = False

    def want(self, queued: int, in_flight: int, draining: bool = False) -> int:
        """Rows to ask for now, given what is queued and in flight: 0 while a request is outstanding."""
        if self.asked or draining:
            return 0
        backlog = queued + in_flight
        most = RESERVE_CHUNKS * self.chunk_size
        reserve = min(most, int(self.rate * self.round_trip * RESERVE_ROUND_TRIPS))
        if reserve < RESERVE_MIN or self.reserve_refused:
            return max(0, self.window - backlog)
        if backlog > self.window + reserve:
            return 0
        return self.window + min(most, reserve + int(self.rate * ASK_EVERY)) - backlog

    def free(self, queued: int, in_flight: int) -> int:
        """Slots that could start a transfer now if rows came."""
        return max(0, self.window - queued - in_flight)

    def sent(self, want: int, now: float) -> None:
        """A request for ``want`` rows went out (none: nothing was asked)."""
        if want:
            self.asked, self.asked_at = True, now

    def answered(self, rows: int, now: float) -> None:
        """The coordinator answered the request with ``rows`` rows."""
        self.asked = False
        self.round_trip = 0.8 * self.round_trip + 0.2 * (now - self.asked_at)
        if not rows:
            self.reserve_refused = True

    def count_finished(self, count: int, now: float) -> None:
        """``count`` transfers finished; the finishing rate is smoothed over :data:`RATE_WINDOW` windows."""
        self.finished += count
        elapsed = now - self.rate_since
        if elapsed >= RATE_WINDOW:
            self.rate = 0.5 * self.rate + 0.5 * self.finished / elapsed
            self.finished, self.rate_since = 0, now
