"""Pacing: a requests-per-second limit, and a window that backs off on 429.

The rules are written once, as pure steps of :class:`PacerSettings` over a frozen
:class:`PaceState`, with the clock passed in; they hold for all senders together. The
pool carries the state in shared memory (:class:`Pacer`), worker nodes in Redis
(:class:`~engine.cluster.pacing.NodePacer`), where the GCRA step is its Lua twin
(``engine/cluster/gcra.lua``, tested against the same contract) so that taking a slot
stays one atomic round trip.

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
  undone; when the next cut shows the same, that share is learnt as the *noise floor* (one
  epoch can mislead: a busy machine answers fewer whatever the window). The tolerated share is
  ``max(10 %, 1.25 × floor)``; the floor decays by 2 % a second, so a server whose
  noise stops is watched closely again within a minute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from engine.delivery.shared import Carried, SharedRecord

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


@dataclass(frozen=True)
class PaceState(Carried):
    """The pacer between two steps; times are on the carrier's clock."""

    tat: float = 0.0  #: GCRA's "theoretical arrival time" of the next transfer
    rate_share: float = 1.0  #: share of ``--rate`` allowed now
    window: float = 0.0  #: transfers in flight allowed now, for all senders together
    epoch_start: float = 0.0
    answers: float = 0.0  #: in this epoch
    throttled: float = 0.0  #: answers that were 429, in this epoch
    floor: float = 0.0  #: the learnt noise floor: a 429 share that does not follow the load
    cutting: float = 0.0  #: 1.0 while the last epoch cut the window
    cut_window: float = 0.0  #: the window before the last cut (0: no cut to check)
    cut_rate_share: float = 0.0
    cut_goodput: float = 0.0  #: successes per second in the epoch that caused the cut
    cut_share: float = 0.0
    cut_factor: float = 0.0
    suspected: float = 0.0  #: 1.0 once a cut looked like noise: the next that does teaches the floor


@dataclass(frozen=True)
class PacerSettings:
    """``workers`` senders of ``concurrency`` transfers each, ``rate`` requests per second at most
    (None: no limit); and the pacer's rules, as pure steps from one state to the next."""

    rate: float | None
    workers: int
    concurrency: int

    @property
    def total(self) -> int:
        return self.workers * self.concurrency

    def initial(self, now: float) -> PaceState:
        return PaceState(window=float(self.total), epoch_start=now)

    def take_slot(self, state: PaceState, now: float) -> tuple[float, PaceState]:
        """GCRA: 0 if a transfer may start at ``now`` (its slot is taken), else the seconds to wait."""
        if not self.rate:
            return 0.0, state
        interval = 1.0 / (self.rate * state.rate_share)
        tat = max(state.tat, now)
        if tat - now > max(BURST_SECONDS, interval):
            return tat - now - BURST_SECONDS, state
        return 0.0, replace(state, tat=tat + interval)

    def window_of(self, state: PaceState) -> int:
        """Transfers in flight one sender may have."""
        return max(1, int(state.window / self.workers))

    def rest_on_429(self, state: PaceState) -> bool:
        """Whether a slot that got a 429 rests until its row's retry (or it would spin on instant 429s).

        It does unless the 429s are known noise: a floor was learnt and the share is within it.
        """
        return state.floor * NOISE_MARGIN <= THROTTLED_SHARE or bool(state.cutting)

    def count(self, state: PaceState, answers: int, throttled: int, now: float) -> PaceState:
        """Count answers (``throttled`` of them 429); at an epoch's end, adjust the window and rate."""
        state = replace(state, answers=state.answers + answers, throttled=state.throttled + throttled)
        elapsed = now - state.epoch_start
        if elapsed < EPOCH:
            return state
        if state.answers:
            share, goodput = state.throttled / state.answers, (state.answers - state.throttled) / elapsed
            state = self._end_epoch(state, share, goodput)
        else:
            state = self._grow(state)
        return replace(state, epoch_start=now, answers=0.0, throttled=0.0)

    def _end_epoch(self, s: PaceState, share: float, goodput: float) -> PaceState:
        if s.cut_window:
            if _cut_was_noise(s, share, goodput):
                learnt = max(s.floor, share) if s.suspected else s.floor
                return replace(
                    s,
                    window=s.cut_window,
                    rate_share=s.cut_rate_share,
                    floor=learnt,
                    suspected=0.0 if s.suspected else 1.0,
                    cut_window=0.0,
                    cutting=0.0,
                )
            s = replace(s, suspected=0.0)
        s = replace(s, cut_window=0.0)
        tolerated = max(THROTTLED_SHARE, NOISE_MARGIN * s.floor)
        if share > tolerated:
            factor = max(0.5, 1.0 - (share - s.floor))
            s = replace(
                s,
                cut_window=s.window,
                cut_rate_share=s.rate_share,
                cut_goodput=goodput,
                cut_share=share,
                cut_factor=factor,
                window=max(float(self.workers), s.window * factor),
                rate_share=max(MIN_RATE_SHARE, s.rate_share * factor),
                cutting=1.0,
            )
        else:
            s = replace(s, cutting=0.0, suspected=0.0)
            if share == 0.0 or share <= NOISE_MARGIN * s.floor:
                s = self._grow(s)
        return replace(s, floor=s.floor * FLOOR_DECAY)

    def _grow(self, s: PaceState) -> PaceState:
        window = min(float(self.total), s.window + RECOVERY_PER_SECOND * self.total)
        return replace(s, window=window, rate_share=min(1.0, s.rate_share + RECOVERY_PER_SECOND))


def _cut_was_noise(s: PaceState, share: float, goodput: float) -> bool:
    """The last cut cost successes in proportion and left the 429 share where it was.

    Noise keeps the 429 share and loses successes in proportion to the cut; a server at capacity
    ``C`` keeps its successes, and its share falls to ``1 - C / (factor x window)``, that is
    ``1 - (1 - share) / factor``. The goodput test sits halfway between the two; the share must
    stay above three quarters of what it was and above halfway (after a halving, three quarters
    alone is exactly what capacity predicts).
    """
    lost_goodput = goodput < s.cut_goodput * (1.0 + s.cut_factor) / 2
    at_capacity = max(0.0, 1.0 - (1.0 - s.cut_share) / s.cut_factor)
    share_stayed = share > max(s.cut_share * 0.75, (s.cut_share + at_capacity) / 2)
    return lost_goodput and share_stayed


class Pacer:
    """The pool's pacer: its state in shared memory, on the monotonic clock; create it with :meth:`create`."""

    def __init__(self, state: SharedRecord[PaceState], settings: PacerSettings):
        self.state = state
        self.settings = settings

    @classmethod
    def create(cls, context, rate: float | None, workers: int, concurrency: int) -> Pacer:
        settings = PacerSettings(rate, workers, concurrency)
        return cls(SharedRecord.create(context, settings.initial(time.monotonic())), settings)

    def acquire(self) -> float:
        """0 if a transfer may start now (and it is counted), else the seconds to wait."""
        if not self.settings.rate:
            return 0.0
        return self.state.step(self.settings.take_slot)

    def window(self) -> int:
        """Transfers in flight one worker may have now."""
        return self.settings.window_of(self.state.read())

    def report(self, answers: int, throttled: int) -> None:
        """Count a worker's answers (and how many were 429) and adjust at each epoch's end."""
        self.state.step(lambda state, now: (None, self.settings.count(state, answers, throttled, now)))

    def rest_on_429(self) -> bool:
        return self.settings.rest_on_429(self.state.read())
