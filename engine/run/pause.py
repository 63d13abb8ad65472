"""Pauses as a pass sees them: the outage pause (when it began and ended, how long in all) and an
operator's pause."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from engine.errors import LedgerError
from engine.ledger import Store

#: ``say(note, event, **fields)``: a progress note and an event-log line.
Say = Callable[..., None]


class Clock(Protocol):
    """The two clocks a pass reads (the :mod:`time` module, or a test's fake)."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


#: Why a pass paused, as its pause periods in the ledger say.
ENDPOINT_DOWN, OPERATOR = "endpoint down", "operator"


class PausePeriods:
    """Writes when a pass's pauses begin and end to the ledger, for the dashboard. A ledger that
    cannot take the note does not stop the pass for it (what was sent is recorded elsewhere)."""

    def __init__(self, ledger: Store, run_id: str):
        self.ledger, self.run_id = ledger, run_id

    def note(self, reason: str, paused: bool) -> None:
        try:
            if paused:
                self.ledger.pause_began(self.run_id, reason)
            else:
                self.ledger.pause_ended(self.run_id, reason)
        except LedgerError:
            pass


class PauseClock:
    """Says when the senders pause because the endpoint is down and when they resume, and bounds the
    pause of a pass to ``max_pause`` seconds in all."""

    def __init__(self, max_pause: float, periods: PausePeriods, clock: Clock = time):
        self.max_pause, self.periods, self.clock = max_pause, periods, clock
        self.paused_since: float | None = None  # monotonic
        self.paused_total = 0.0
        self.gave_up: str | None = None

    def observe(self, down_since: float | None, say: Say) -> str | None:
        """Look at the outage state (wall time it began, or None); the reason to give up, once it is time."""
        now = self.clock.monotonic()
        if down_since is not None and self.paused_since is None:
            self.paused_since = now
            since = time.strftime("%H:%M:%S", time.localtime(down_since))
            say(f"paused: endpoint down since {since}", "pause", reason=ENDPOINT_DOWN, since=down_since)
            self.periods.note(ENDPOINT_DOWN, True)
        elif down_since is None and self.paused_since is not None:
            self.paused_total += now - self.paused_since
            self.paused_since = None
            say("resumed", "resume")
            self.periods.note(ENDPOINT_DOWN, False)
        paused = self.paused_total + (now - self.paused_since if self.paused_since is not None else 0.0)
        if self.gave_up is None and paused > self.max_pause:
            self.gave_up = f"the endpoint stayed down: the pass paused {self.max_pause:g} s in all (--max-pause)"
            say("giving up: paused longer than --max-pause", "give_up", reason=self.gave_up)
            return self.gave_up
        return None


class OperatorPause:
    """``engine pause RUN`` (or the dashboard's button) as a running pass sees it: the run's flag in
    the ledger, read at most every :attr:`LOOK_EVERY` seconds. While it is set the pass starts
    nothing new; what is in flight finishes and is recorded."""

    LOOK_EVERY = 0.5

    def __init__(self, ledger: Store, run_id: str, periods: PausePeriods, clock: Clock = time):
        self.ledger, self.run_id, self.periods, self.clock = ledger, run_id, periods, clock
        self.paused = False
        self.looked_at = float("-inf")

    def check(self, say: Say) -> bool:
        """Whether the run is paused now; ``say(note, event)`` when that changes."""
        if self.clock.monotonic() - self.looked_at >= self.LOOK_EVERY:
            self.looked_at = self.clock.monotonic()
            paused = self.ledger.is_paused(self.run_id)
            if paused != self.paused:
                self.paused = paused
                self.periods.note(OPERATOR, paused)
                if paused:
                    say("paused by an operator: in-flight requests finish, nothing new starts", "operator_pause")
                else:
                    say("resumed by an operator", "operator_resume")
        return self.paused
