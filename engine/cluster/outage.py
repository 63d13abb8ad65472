"""The outage pause for all worker nodes together: the circuit breaker's state in Redis.

The rules are the local breaker's own (:class:`~engine.delivery.breaker.BreakerSettings`: only a
row's first "down" answer counts, a streak of ``threshold`` such answers after the endpoint was
seen up opens it, one probe at growing intervals, and only the probe's answer closes it); this
module only carries its state, in a hash changed in WATCH/MULTI transactions on Redis's clock
(:class:`~engine.cluster.carrier.RedisRecord`). An operator's pause is the state's ``held``.
"""

from __future__ import annotations

import time
from dataclasses import replace

from engine.cluster.carrier import RedisRecord
from engine.cluster.link import RedisLink
from engine.delivery.breaker import Answer, BreakerSettings, BreakerState, Mode, Permit

#: How long a node trusts that the breaker is closed before asking Redis again (s).
CLOSED_CACHE = 0.1
#: How long a pass's breaker outlives its last change in Redis (s).
BREAKER_TTL = 86400


class SharedBreaker:
    """The run's breaker in Redis, with the interface of :class:`~engine.delivery.breaker.CircuitBreaker`."""

    def __init__(self, link: RedisLink, run_id: str, pass_no: int, settings: BreakerSettings):
        self.link = link
        self.key = f"batch-engine:breaker:{run_id}:{pass_no}"  # each pass starts closed, as locally
        self.settings = settings
        self.state = RedisRecord(link, self.key, lambda now: settings.initial(), BREAKER_TTL)
        self.closed_until = 0.0  # monotonic: the breaker was closed when last asked, trusted until then
        self.reset_due = 0.0

    def allow(self) -> Permit:
        """Wait also while Redis is unreachable."""
        now = time.monotonic()
        if now < self.closed_until:
            return Permit.GO
        permit = self.state.step(self.settings.allow, Permit.WAIT)
        if permit is Permit.GO:
            self.closed_until = now + CLOSED_CACHE
        return permit

    def record(self, answer: Answer) -> None:
        """Count one answer; a success only every :data:`CLOSED_CACHE` seconds (it just breaks a streak).
        An answer that cannot reach Redis is not counted."""
        now = time.monotonic()
        if answer is Answer.UP:
            if now < self.reset_due:
                return
            self.reset_due = now + CLOSED_CACHE

        def step(state: BreakerState, clock: float) -> tuple[Mode, BreakerState]:
            after = self.settings.record(state, answer, clock)
            return after.mode, after

        if self.state.step(step, Mode.OPEN) is not Mode.CLOSED:
            self.closed_until = 0.0

    def hold(self, held: bool) -> None:
        """An operator's pause: every node waits until it is lifted."""
        self.state.step(lambda state, now: (None, replace(state, held=held)), None)

    def held(self) -> bool:
        return self.link.call(lambda: self.state.read()[0].held, False)

    def is_open(self) -> bool:
        return self.link.call(lambda: self.state.read()[0].mode is not Mode.CLOSED, False)

    def outage_since(self) -> float | None:
        """When the breaker opened (Redis's wall time), or None while it is closed (or Redis cannot say)."""
        state = self.link.call(lambda: self.state.read()[0], None)
        return state.opened_at if state is not None and state.mode is not Mode.CLOSED else None


class PassSignals:
    """What a coordinator tells every node about one pass, in Redis: stop starting requests.

    Set on Ctrl-C or when the outage pause has lasted ``--max-pause``: nodes finish what is in
    flight, record it, and mark their chunks done; rows never started wait for a rerun. A node
    that cannot reach Redis for as long as its link's bound stops the same way.
    """

    #: How long a node trusts its last look at the flag (s).
    LOOK_EVERY = 0.1

    def __init__(self, link: RedisLink, run_id: str, pass_no: int):
        self.link = link
        self.key = f"batch-engine:stop:{run_id}:{pass_no}"
        self.looked_at = float("-inf")
        self.stopping = False

    def request_stop(self) -> bool:
        """Tell every node; False if Redis could not be reached (ask again)."""
        return self.link.call(lambda: bool(self.link.client.set(self.key, 1, ex=86400)), False)

    def stop_requested(self) -> bool:
        now = time.monotonic()
        if not self.stopping and now - self.looked_at >= self.LOOK_EVERY:
            self.looked_at = now
            self.stopping = bool(self.link.call(lambda: self.link.client.exists(self.key), 0)) or self.link.gave_up()
        return self.stopping
