"""Pacing for all worker nodes together: the pacer's state in Redis, under the run's key.

The rules are the local pacer's own (:class:`~engine.delivery.ratelimit.PacerSettings`), on
Redis's clock, so nodes on machines whose clocks differ still share one schedule:

- ``--rate``: taking a slot of the GCRA schedule is one atomic Lua script (``gcra.lua``, the twin
  of :meth:`~engine.delivery.ratelimit.PacerSettings.take_slot`, held to the same contract by
  ``tests/test_breaker.py``), since it runs before every request;
- 429s: each sender reports its answers (its gate does so at least every
  :data:`~engine.delivery.gate.REPORT_EVERY`), counted in a WATCH/MULTI transaction
  (:class:`~engine.cluster.carrier.RedisRecord`); at an epoch's end the window of every sender
  and the rate shrink or grow back by the same rule as locally. A sender is one "worker" of
  ``concurrency`` transfers: the window is a share of each sender's own.
"""

from __future__ import annotations

from importlib.resources import files

from engine.cluster.carrier import RedisRecord
from engine.cluster.link import RedisLink
from engine.delivery.ratelimit import BURST_SECONDS, PacerSettings, PaceState

#: The wait (µs) while Redis cannot hand out a slot.
UNSURE = 500_000
#: How long a run's pacer outlives its last change in Redis (s).
PACER_TTL = 3600
#: The GCRA step in Lua.
TAKE_SLOT = files("engine.cluster").joinpath("gcra.lua").read_text()


class NodePacer:
    """What a node's :class:`~engine.delivery.gate.Gate` asks of a pacer: a window per chunk sender
    of ``window`` transfers at most, and ``rate`` requests per second (None: no limit), both across
    every node sending ``run_id``."""

    def __init__(self, link: RedisLink, run_id: str, rate: float | None, window: int):
        self.key = f"batch-engine:pacer:{run_id}"
        self.settings = PacerSettings(rate, workers=1, concurrency=window)
        self.link = link
        self.state = RedisRecord(link, self.key, self.settings.initial, PACER_TTL)
        self.seen: PaceState = self.settings.initial(0.0)  # as of this sender's last report
        self.take_slot = link.client.register_script(TAKE_SLOT)

    def acquire(self) -> float:
        """0 if a request may start now (its slot is taken), else the seconds to wait (while Redis is
        unreachable: a little, then ask again)."""
        rate = self.settings.rate
        if not rate:
            return 0.0
        args = [rate, BURST_SECONDS, PACER_TTL]
        wait_us = self.link.call(lambda: self.take_slot(keys=[self.key], args=args), UNSURE)
        return int(wait_us) / 1_000_000

    def window(self) -> int:
        return self.settings.window_of(self.seen)

    def report(self, answers: int, throttled: int) -> None:
        """Count answers (``throttled`` of them 429) for all nodes; an answer that cannot reach Redis
        is not counted, and the window stays as last seen."""

        def step(state: PaceState, now: float) -> tuple[PaceState, PaceState]:
            after = self.settings.count(state, answers, throttled, now)
            return after, after

        self.seen = self.state.step(step, self.seen)

    def rest_on_429(self) -> bool:
        return self.settings.rest_on_429(self.seen)
