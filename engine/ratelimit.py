"""Pool-wide pacing: a requests-per-second limit, and a window that backs off on 429.

Both live in one shared ``multiprocessing.Array`` so the limits hold for all workers
together, not per process.

- ``--rate N`` is a GCRA (generic cell rate algorithm) schedule: a transfer may start
  when the pool's "theoretical arrival time" is not ahead of now by more than the
  burst allowance; each start pushes it by ``1/N``. In any one-second window at most
  ``N`` plus a few transfers start.
- 429 (Too Many Requests) is answered by AIMD over one-second epochs, driven by the
  share of answers that were 429: above :data:`THROTTLED_SHARE` the window of
  transfers in flight (and the rate, when one is set) is multiplied by
  ``1 - share`` (at most halved); an epoch with no 429 grows them back by
  :data:`RECOVERY_PER_SECOND` of their configured size. A few scattered 429s thus
  change nothing, while a server that accepts only 40 requests at a time brings the
  window down to about 40 within a few seconds.
"""

from __future__ import annotations

import time

from engine.shared import SharedState

_TAT, _RATE_SHARE, _WINDOW, _EPOCH_START, _ANSWERS, _THROTTLED = range(6)
#: Share of 429 answers in an epoch above which the pool slows down.
THROTTLED_SHARE = 0.10
#: Share of the configured window and rate regained after an epoch without a 429.
RECOVERY_PER_SECOND = 0.05
#: Length of an epoch (s).
EPOCH = 1.0
#: Smallest share of the configured rate that 429s can push the pool down to.
MIN_RATE_SHARE = 0.02
#: Burst allowance above the steady rate, in seconds of rate.
BURST_SECONDS = 0.02


class Pacer(SharedState):
    """Shared pacing state for ``workers`` processes of ``concurrency`` transfers each."""

    def __init__(self, shared, rate: float | None, workers: int, concurrency: int):
        super().__init__(shared)
        self.rate = rate
        self.workers, self.concurrency = workers, concurrency
        self.total = workers * concurrency

    @classmethod
    def create(cls, context, rate: float | None, workers: int, concurrency: int) -> "Pacer":
        shared = context.Array("d", [0.0, 1.0, float(workers * concurrency), time.monotonic(), 0.0, 0.0])
        return cls(shared, rate, workers, concurrency)

    def acquire(self) -> float:
        """0 if a transfer may start now (and it is counted), else the seconds to wait."""
        if not self.rate:
            return 0.0
        s = self.shared
        with s.get_lock():
            now = time.monotonic()
            interval = 1.0 / (self.rate * s[_RATE_SHARE])
            tat = max(s[_TAT], now)
            if tat - now > max(BURST_SECONDS, interval):
                return tat - now - BURST_SECONDS
            s[_TAT] = tat + interval
            return 0.0

    def window(self) -> int:
        """Transfers in flight one worker may have now."""
        return max(1, int(self.view[_WINDOW] / self.workers))

    def report(self, answers: int, throttled: int) -> None:
        """Count a worker's answers (and how many were 429) and adjust at each epoch's end."""
        s = self.shared
        with s.get_lock():
            s[_ANSWERS] += answers
            s[_THROTTLED] += throttled
            now = time.monotonic()
            if now - s[_EPOCH_START] < EPOCH:
                return
            share = s[_THROTTLED] / s[_ANSWERS] if s[_ANSWERS] else 0.0
            if share > THROTTLED_SHARE:
                factor = max(0.5, 1.0 - share)
                s[_WINDOW] = max(float(self.workers), s[_WINDOW] * factor)
                s[_RATE_SHARE] = max(MIN_RATE_SHARE, s[_RATE_SHARE] * factor)
            elif share == 0.0:
                s[_WINDOW] = min(float(self.total), s[_WINDOW] + RECOVERY_PER_SECOND * self.total)
                s[_RATE_SHARE] = min(1.0, s[_RATE_SHARE] + RECOVERY_PER_SECOND)
            s[_EPOCH_START], s[_ANSWERS], s[_THROTTLED] = now, 0.0, 0.0

    def in_flight_limit(self) -> int:
        return int(self.view[_WINDOW])
