"""The pool-wide circuit breaker: when the endpoint goes down, the whole run pauses.

Only evidence that the *endpoint* is down trips it, never a few customers that fail on
their own:

- an answer counts as evidence only if it is "down" (connection refused, connect
  timeout, 502/503/504) **and** it is that row's first down answer in this pass, so a
  streak is made of distinct rows; rows that keep failing (a customer whose charge
  always gets 503) add nothing, however often they are retried;
- any success breaks the streak; ``threshold`` counted answers in a row open the breaker;
- it opens only once the endpoint has answered at least once in this pass: an endpoint
  never seen up (wrong port, wrong host) is a mistake to report, not an outage to wait
  out, so its rows use their attempts and fail with the reason.

While open no worker starts a transfer. At growing intervals (capped at
``max_interval``) exactly one worker claims a probe and sends one request, preferring a
row that has not failed yet; only the probe's answer closes the breaker (a late success
of a transfer started before the pause does not). The coordinator bounds the total
pause of a pass (``--max-pause``).

The rules are one pure state machine, :meth:`BreakerSettings.allow` and
:meth:`BreakerSettings.record` over a frozen :class:`BreakerState`, with the clock passed in.
Its carriers only hold the state: :class:`CircuitBreaker` in the pool's shared memory (under
its lock, monotonic clock), :class:`~engine.cluster.outage.SharedBreaker` in Redis for worker
nodes (in a WATCH/MULTI transaction, Redis's clock).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum, IntEnum

from engine.delivery.shared import Carried, SharedRecord

#: HTTP statuses that mean "the endpoint is down", not "this request failed".
DOWN_STATUSES = frozenset({502, 503, 504})


class Permit(Enum):
    """What a worker may do with its next transfer."""

    GO = "go"  #: send normally (the pacer still has its say)
    PROBE = "probe"  #: send this one transfer as the outage probe, and nothing else
    WAIT = "wait"  #: start nothing


class Mode(IntEnum):
    CLOSED = 0
    OPEN = 1  #: paused; a probe may be claimed from ``probe_at``
    PROBING = 2  #: one worker's probe is out


class Answer(Enum):
    """One answer, as the breaker weighs it."""

    UP = "up"  #: the endpoint answered
    DOWN = "down"  #: a row's first "down" answer in this pass: evidence of an outage
    DOWN_AGAIN = "down again"  #: a row that was down already: no evidence
    PROBE_UP = "probe up"
    PROBE_DOWN = "probe down"
    PROBE_UNSENT = "probe unsent"  #: the probe was never sent (its sender's claim ended first)

    @classmethod
    def of(cls, down: bool, probe: bool, counted: bool) -> Answer:
        if probe:
            return cls.PROBE_DOWN if down else cls.PROBE_UP
        if down:
            return cls.DOWN if counted else cls.DOWN_AGAIN
        return cls.UP


@dataclass(frozen=True)
class BreakerState(Carried):
    """The breaker between two answers; times are on the carrier's clock."""

    mode: Mode = Mode.CLOSED
    streak: int = 0  #: counted "down" answers in a row
    probe_at: float = 0.0  #: when a probe may be claimed
    interval: float = 0.0  #: the current wait between probes
    opened_at: float = 0.0
    probe_started: float = 0.0
    seen_up: bool = False  #: the endpoint answered at least once in this pass
    held: bool = False  #: an operator's pause (nodes: the coordinator sets it): nothing starts

    @classmethod
    def decode(cls, values: Sequence[float]) -> BreakerState:
        mode, streak, probe_at, interval, opened_at, probe_started, seen_up, held = map(float, values)
        return cls(
            Mode(int(mode)), int(streak), probe_at, interval, opened_at, probe_started, bool(seen_up), bool(held)
        )


@dataclass(frozen=True, kw_only=True)
class BreakerSettings:
    """When to open (``threshold`` 0: never), how the probe interval grows, when a probe is lost;
    and the breaker's rules, as pure steps from one state to the next."""

    threshold: int = 20
    first_interval: float = 0.5
    max_interval: float = 2.0
    probe_timeout: float = 35.0

    def initial(self) -> BreakerState:
        return BreakerState(interval=self.first_interval)

    def allow(self, state: BreakerState, now: float) -> tuple[Permit, BreakerState]:
        """May a transfer start at ``now``? A claimed probe (also one whose answer is overdue) changes the state."""
        if state.held:
            return Permit.WAIT, state
        if state.mode is Mode.CLOSED:
            return Permit.GO, state
        stuck_probe = state.mode is Mode.PROBING and now - state.probe_started > self.probe_timeout
        if (state.mode is Mode.OPEN and now >= state.probe_at) or stuck_probe:
            return Permit.PROBE, replace(state, mode=Mode.PROBING, probe_started=now)
        return Permit.WAIT, state

    def record(self, state: BreakerState, answer: Answer, now: float) -> BreakerState:
        """The state after ``answer`` arrived at ``now``."""
        if answer is Answer.PROBE_UP:
            return replace(state, mode=Mode.CLOSED, streak=0, interval=self.first_interval, seen_up=True)
        if answer is Answer.PROBE_DOWN:
            interval = min(self.max_interval, state.interval * 2)
            return replace(state, mode=Mode.OPEN, interval=interval, probe_at=now + interval)
        if answer is Answer.PROBE_UNSENT:  # nothing was learnt: another sender may probe at once
            return replace(state, mode=Mode.OPEN, probe_at=now) if state.mode is Mode.PROBING else state
        if answer is Answer.UP:
            state = state if state.seen_up else replace(state, seen_up=True)
            # while open, a late success from before the pause proves nothing
            return replace(state, streak=0) if state.mode is Mode.CLOSED and state.streak else state
        if answer is Answer.DOWN_AGAIN or state.mode is not Mode.CLOSED:
            return state
        streak = state.streak + 1
        if self.threshold and streak >= self.threshold and state.seen_up:
            return replace(state, mode=Mode.OPEN, streak=streak, opened_at=now, probe_at=now + state.interval)
        return replace(state, streak=streak)


class CircuitBreaker:
    """The pool's breaker: its state in shared memory, on the monotonic clock; create it with :meth:`create`."""

    def __init__(self, state: SharedRecord[BreakerState], settings: BreakerSettings = BreakerSettings()):
        self.state = state
        self.settings = settings

    @classmethod
    def create(cls, context, settings: BreakerSettings = BreakerSettings()) -> CircuitBreaker:
        return cls(SharedRecord.create(context, settings.initial()), settings)

    def allow(self) -> Permit:
        state = self.state.read()
        if state.mode is Mode.CLOSED and not state.held:  # the hot path: the rules' answer, no step
            return Permit.GO
        return self.state.step(self.settings.allow)

    def record(self, answer: Answer) -> None:
        if answer is Answer.UP:  # the hot path: a success that changes nothing is not a step
            state = self.state.read()
            if state.seen_up and not state.streak:
                return
        self.state.step(lambda state, now: (None, self.settings.record(state, answer, now)))

    def is_open(self) -> bool:
        return self.state.read().mode is not Mode.CLOSED

    def opened_at(self) -> float:
        """Wall-clock time the breaker last opened."""
        return time.time() - (time.monotonic() - self.state.read().opened_at)


def is_down(http_status: int | None, curl_error: int | None, connected: bool) -> bool:
    """Does this outcome say the endpoint is down (rather than that one request failed)?"""
    if curl_error is not None:
        return not connected
    return http_status in DOWN_STATUSES
