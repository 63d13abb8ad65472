"""Pool-wide pacing: a requests-per-second limit and a window that backs off on 429.

Both live in one shared ``multiprocessing.Array`` so the limits hold for all workers
together, not per process.

- ``--rate N`` is a GCRA (generic cell rate algorithm) token schedule: a transfer may
  start when the pool's "theoretical arrival time" is not ahead of now by more than
  the burst allowance; each start pushes it by ``1/N``. In any one-second window at
  most ``N + burst`` transfers start.
- On HTTP 429 the run slows down by AIMD, as TCP does: at most once a second a 429
  halves the allowed window of transfers in flight (and the rate, when one is set);
  every second without one, they grow back by a tenth of their configured size.
"""

from __future__ import annotations

import time

_TAT, _RATE, _FRACTION, _LAST_CUT, _LAST_RAISE = range(5)
#: Smallest share of the configured window or rate that 429s can push the pool down to.
MIN_FRACTION = 0.02
#: Share of the configured window or rate regained per second without a 429.
RECOVERY_PER_SECOND = 0.1
#: Transfers that may start at once above the steady rate (burst allowance, in seconds of rate).
BURST_SECONDS = 0.02


class Pacer:
    """Shared pacing state; ``rate`` of None means no requests-per-second limit."""

    def __init__(self, shared, rate: float | None):
        self.shared = shared
        self.rate = rate

    @classmethod
    def create(cls, context, rate: float | None) -> "Pacer":
        return cls(context.Array("d", [0.0, rate or 0.0, 1.0, 0.0, 0.0]), rate)

    def acquire(self) -> float:
        """0 if a transfer may start now (and it is counted), else the seconds to wait."""
        if not self.rate:
            return 0.0
        s = self.shared
        with s.get_lock():
            now = time.monotonic()
            rate = self.rate * s[_FRACTION]
            tat = max(s[_TAT], now)
            if tat - now > max(BURST_SECONDS, 1.0 / rate):
                return tat - now - BURST_SECONDS
            s[_TAT] = tat + 1.0 / rate
            return 0.0

    def window(self, configured: int) -> int:
        """Transfers in flight this worker may have now."""
        s = self.shared
        if s[_FRACTION] >= 1.0:
            return configured
        now = time.monotonic()
        if now - s[_LAST_RAISE] >= 1.0:
            with s.get_lock():
                seconds = int(now - max(s[_LAST_RAISE], s[_LAST_CUT]))
                if seconds >= 1:
                    s[_FRACTION] = min(1.0, s[_FRACTION] + RECOVERY_PER_SECOND * seconds)
                    s[_LAST_RAISE] = now
        return max(1, int(configured * s[_FRACTION]))

    def too_many_requests(self) -> None:
        """A 429 came back: halve the window (and rate), at most once a second."""
        s = self.shared
        now = time.monotonic()
        if now - s[_LAST_CUT] < 1.0:
            return
        with s.get_lock():
            if now - s[_LAST_CUT] >= 1.0:
                s[_FRACTION] = max(MIN_FRACTION, s[_FRACTION] / 2)
                s[_LAST_CUT] = s[_LAST_RAISE] = now

    def fraction(self) -> float:
        return self.shared[_FRACTION]
