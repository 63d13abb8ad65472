"""Pool-wide pacing: a requests-per-second limit, and a window that backs off on 429.

Both live in one shared ``multiprocessing.Array`` so the limits hold for all workers
together, not per process.

- ``--rate N`` is a GCRA (generic cell rate algorithm) schedule: a transfer may start
  when the pool's "theoretical arrival time" is not ahead of now by more than the
  burst allowance; each start pushes it by ``1/N``. In any one-second window at most
  ``N`` plus a few transfers start.
- 429 (Too Many Requests) is answered by AIMD over one-second epochs, driven by the
  share of answers that were 429: above the tolerated share the window of transfers in
  flight (and the rate, when one is set) is multiplied by ``1 - excess`` (at most
  halved); an epoch at or below the tolerated share grows them back by
  :data:`RECOVERY_PER_SECOND` of their configured size. A few scattered 429s thus
  change nothing, while a server that accepts only 40 requests at a time brings the
  window down to about 40 within a few seconds.
- Not every 429 is about load. Some servers answer a share of requests 429 whatever
  the load (a per-customer limit, a noisy gateway). Cutting the window then only loses
  throughput, so every cut is checked in the next epoch: if the successes per second
  fell with the window (the server had room) and the 429 share did not, the cut is
  undone and that share is learnt as the *noise floor*. The tolerated share is
  ``max(10 %, 1.25 × floor)``; the floor decays by 2 % a second, so a server whose
  noise stops is watched closely again within a minute.
"""

from __future__ import annotations

import time

from engine.delivery.shared import SharedState

(
    _TAT,
    _RATE_SHARE,
    _WINDOW,
    _EPOCH_START,
    _ANSWERS,
    _THROTTLED,
    _FLOOR,
    _CUTTING,
    _CUT_WINDOW,
    _CUT_RATE_SHARE,
    _CUT_GOODPUT,
    _CUT_SHARE,
    _CUT_FACTOR,
) = range(13)
#: Share of 429 answers in an epoch above which the pool slows down.
THROTTLED_SHARE = 0.10
#: 429 share tolerated above the learnt noise floor (a factor).
NOISE_MARGIN = 1.25
#: The noise floor's decay per epoch.
FLOOR_DECAY = 0.98
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
    def create(cls, context, rate: float | None, workers: int, concurrency: int) -> Pacer:
        shared = context.Array("d", [0.0, 1.0, float(workers * concurrency), time.monotonic()] + [0.0] * 9)
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
            elapsed = now - s[_EPOCH_START]
            if elapsed < EPOCH:
                return
            if s[_ANSWERS]:
                self._end_epoch(s[_THROTTLED] / s[_ANSWERS], (s[_ANSWERS] - s[_THROTTLED]) / elapsed)
            else:
                self._grow()
            s[_EPOCH_START], s[_ANSWERS], s[_THROTTLED] = now, 0.0, 0.0

    def rest_on_429(self) -> bool:
        """Whether a slot that got a 429 rests until its row's retry (or it would spin on instant 429s).

        It does unless the 429s are known noise: a floor was learnt and the share is within it.
        """
        view = self.view
        return view[_FLOOR] * NOISE_MARGIN <= THROTTLED_SHARE or bool(view[_CUTTING])

    def _end_epoch(self, share: float, goodput: float) -> None:
        s = self.shared
        if s[_CUT_WINDOW] and self._cut_was_noise(share, goodput):
            s[_WINDOW], s[_RATE_SHARE] = s[_CUT_WINDOW], s[_CUT_RATE_SHARE]
            s[_FLOOR] = max(s[_FLOOR], share)
            s[_CUT_WINDOW], s[_CUTTING] = 0.0, 0.0
            return
        s[_CUT_WINDOW] = 0.0
        tolerated = max(THROTTLED_SHARE, NOISE_MARGIN * s[_FLOOR])
        if share > tolerated:
            factor = max(0.5, 1.0 - (share - s[_FLOOR]))
            s[_CUT_WINDOW], s[_CUT_RATE_SHARE] = s[_WINDOW], s[_RATE_SHARE]
            s[_CUT_GOODPUT], s[_CUT_SHARE], s[_CUT_FACTOR] = goodput, share, factor
            s[_WINDOW] = max(float(self.workers), s[_WINDOW] * factor)
            s[_RATE_SHARE] = max(MIN_RATE_SHARE, s[_RATE_SHARE] * factor)
            s[_CUTTING] = 1.0
        else:
            s[_CUTTING] = 0.0
            if share == 0.0 or share <= NOISE_MARGIN * s[_FLOOR]:
                self._grow()
        s[_FLOOR] *= FLOOR_DECAY

    def _cut_was_noise(self, share: float, goodput: float) -> bool:
        """The last cut cost successes in proportion and left the 429 share where it was."""
        s = self.shared
        lost_goodput = goodput < s[_CUT_GOODPUT] * (1.0 + s[_CUT_FACTOR]) / 2
        share_stayed = share > s[_CUT_SHARE] * 0.75
        return lost_goodput and share_stayed

    def _grow(self) -> None:
        s = self.shared
        s[_WINDOW] = min(float(self.total), s[_WINDOW] + RECOVERY_PER_SECOND * self.total)
        s[_RATE_SHARE] = min(1.0, s[_RATE_SHARE] + RECOVERY_PER_SECOND)

    def in_flight_limit(self) -> int:
        return int(self.view[_WINDOW])
