"""One pass, supervised: what a pass does whatever carries its rows.

A pass holds the run's lease and renews it, bounds the endpoint's outage pause, follows an
operator's pause, turns Ctrl-C or a reason to give up into a drain with a deadline, tells
progress and the event log, and says at the end how it ended (``interrupted``, ``gave_up``,
``clean``). That is the :class:`PassSupervisor`, written once. How rows reach the senders is
a :class:`Distribution`: the local pool (:class:`~engine.run.passes.LocalPass`) or worker
nodes over a broker (:class:`~engine.run.broker_pass.BrokerPass`).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from engine.config import RunSettings
from engine.ledger import Store
from engine.ledger.lease import HEARTBEAT_INTERVAL, Hold, Holder
from engine.output.events import EventLog
from engine.output.progress import Progress
from engine.run.killswitch import KillSwitch
from engine.run.pause import Clock, OperatorPause, PauseClock, PausePeriods
from engine.run.signals import StopRequest
from engine.states import FAILED, REJECTED, RETRYING, SUCCEEDED
from engine.wire import ATTEMPT, OUTCOME, RID

#: Extra time, beyond --timeout, that senders get to finish in-flight transfers on Ctrl-C (s).
DRAIN_GRACE = 5.0
#: Why a pass an operator cancelled (``engine cancel``, the dashboard's button) ended.
CANCELLED = "cancelled by an operator"
#: Ctrl-Cs after which a pass stops at once instead of draining.
STOP_NOW = 2


#: "Try again" answers in a row after which a row weighs as refused for the kill switch (a random
#: 50 % of 500s makes one row in eight look so; a customer that always fails, every one).
DOUBTED_AFTER = 3


@dataclass
class PassTally:
    """Counts of a pass, for progress and the end-of-pass line."""

    attempts: int = 0
    succeeded: int = 0
    not_succeeded: int = 0
    retries: int = 0
    #: Rows that ended ``rejected`` or ``failed`` in this pass: what the kill switch weighs.
    refused: int = 0
    #: Rows answered "try again" :data:`DOUBTED_AFTER` times in this pass and not final yet: a customer
    #: that keeps failing (not a blip, which the first retries ride out) weighs as refused until its row ends.
    doubted: set[int] = field(default_factory=set)

    @property
    def definitive(self) -> int:
        """Rows of this pass with an outcome (anything but a scheduled retry)."""
        return self.succeeded + self.not_succeeded

    def weigh(self, attempts: list[tuple]) -> None:
        """Follow the rows that keep failing (see :attr:`doubted`), from a batch of attempt records."""
        for attempt in attempts:
            if attempt[OUTCOME] == RETRYING:
                if attempt[ATTEMPT] >= DOUBTED_AFTER:
                    self.doubted.add(attempt[RID])
            else:
                self.doubted.discard(attempt[RID])

    def failing(self) -> tuple[int, int]:
        """What the kill switch weighs: rows refused or still failing, out of rows with an outcome or still failing."""
        return self.refused + len(self.doubted), self.definitive + len(self.doubted)

    def add(self, outcomes: Counter) -> None:
        """Count a batch of attempts, given as outcome -> how many."""
        retries = outcomes.get(RETRYING, 0)
        succeeded = outcomes.get(SUCCEEDED, 0)
        total = sum(outcomes.values())
        self.attempts += total
        self.retries += retries
        self.refused += outcomes.get(REJECTED, 0) + outcomes.get(FAILED, 0)
        self.succeeded += succeeded
        self.not_succeeded += total - retries - succeeded


class Distribution(Protocol):
    """How one pass's rows reach the senders and how their results come back; the
    :class:`PassSupervisor` calls it, in this order, once per look."""

    def start(self) -> bool:
        """Get ready to hand out rows; False if the user stopped the pass before anything was sent."""

    def step(self) -> None:
        """Wait a moment for news (results, the ledger's counts) and take it in."""

    def finished(self) -> bool:
        """Every row of the pass is final and nothing is in flight."""

    def outage_since(self) -> float | None:
        """When the senders paused because the endpoint is down (wall time), or None."""

    def watch(self) -> None:
        """Look after the senders themselves (stalled workers, silent chunks, refusing nodes)."""

    def hold_back(self, paused: bool) -> None:
        """An operator's pause, as it stands now: while True, nothing new starts."""

    def drain(self) -> None:
        """Stop starting requests; let what is in flight finish and be recorded."""

    def drained(self) -> bool:
        """After :meth:`drain`: no sender is left that may still send."""

    def outlast(self) -> AbstractContextManager[None]:
        """Around each look: the ledger outages this distribution waits out instead of failing."""

    def end(self, complete: bool) -> bool:
        """The pass is over (``complete``: every row final); True if nothing it handed out can
        still be in progress at the API. Called however the pass ends."""

    def tally(self) -> PassTally:
        """What the pass did so far."""


class PassSupervisor:
    """One pass of a run: the lease, the pauses, the stop, the fan-out and the ending.

    ``hold``, left by an earlier pass that did not end cleanly, names the rows it may have had
    in flight until their attempt timeout has passed; a distribution honours it. ``clean`` says,
    at the end, whether nothing can still be in progress at the API, so the lease can be dropped.
    """

    def __init__(
        self,
        ledger: Store,
        run_id: str,
        settings: RunSettings,
        *,
        progress: Progress | None = None,
        events: EventLog | None = None,
        stop: StopRequest | None = None,
        holder: Holder | None = None,
        hold: Hold | None = None,
        kill_switch: KillSwitch | None = None,
        clock: Clock = time,
    ):
        self.ledger, self.run_id, self.settings, self.clock = ledger, run_id, settings, clock
        self.progress = progress or Progress(0, "pass", quiet=True)
        self.events = events or EventLog(None)
        self.stop = stop or StopRequest()
        self.holder = holder or Holder.this_process()
        self.hold = hold
        self.kill_switch = kill_switch
        self.renewed_at = clock.monotonic()
        periods = PausePeriods(ledger, run_id)
        self.pause = PauseClock(settings.max_pause, periods, clock)
        self.operator = OperatorPause(ledger, run_id, periods, clock)
        self.stop_at: float | None = None  # stopping (drain) began; it ends by this monotonic time
        self.interrupted = False
        self.gave_up: str | None = None  # why the pass ended before every row was final
        self.stopped: str | None = None  # why it was stopped on purpose (the kill switch): exit 4
        self.clean = False
        self.distribution: Distribution  # the one :meth:`run` was given
        self.looking = False  # between the first look and the last

    @property
    def stopping(self) -> bool:
        """The pass drains: nothing new is handed out."""
        return self.stop_at is not None

    @property
    def ending(self) -> bool:
        """Stopping, or asked to stop (the next look begins the drain)."""
        return self.stopping or self.stop.count > 0

    def run(self, distribution: Distribution) -> PassTally:
        """Send the pass's rows through ``distribution``; whatever ends it, the distribution ends too."""
        self.distribution = distribution
        complete = False
        try:
            if distribution.start():
                complete = self._supervise()
            else:
                self.interrupted = True
        finally:
            quiet = distribution.end(complete)
        hold_pending = self.hold is not None and self.hold.until > self.clock.time()
        self.clean = quiet and (complete or not hold_pending)
        return distribution.tally()

    def _supervise(self) -> bool:
        """Look until the pass is over; True if it is complete (every row final)."""
        distribution, self.looking = self.distribution, True
        try:
            return self._look_until_over(distribution)
        finally:
            self.looking = False

    def _look_until_over(self, distribution: Distribution) -> bool:
        while True:
            with distribution.outlast():
                distribution.step()
                if distribution.finished():
                    return True
                if self._stopped():
                    return False
                self._watch_failure_rate()
                self._watch_outage()
                distribution.watch()
                paused = self.operator.check(self.say)
                distribution.hold_back(paused)
                if paused and not self.stopping and self.ledger.is_cancelled(self.run_id):
                    self.give_up(CANCELLED)  # in-flight rows finish; the rest stays for a rerun
                self.heartbeat()

    def _stopped(self) -> bool:
        """Ctrl-C begins a drain; a second one, the drain's deadline, or nobody left ends the pass."""
        if self.stop.count and not self.stopping:
            self.interrupted = True
            self._begin_stopping()
        if self.stop_at is None:
            return False
        return self.stop.count >= STOP_NOW or self.clock.monotonic() > self.stop_at or self.distribution.drained()

    def _begin_stopping(self) -> None:
        self.distribution.drain()
        self.stop_at = self.clock.monotonic() + self.settings.timeout + DRAIN_GRACE

    def give_up(self, reason: str) -> None:
        """End the pass before every row is final: the first reason is the one told; while the pass
        looks, the senders drain, if they do not already."""
        if self.gave_up is None:
            self.gave_up = reason
        if self.looking and not self.stopping:
            self._begin_stopping()

    def stop_on_purpose(self, reason: str) -> None:
        """End the pass because a rule the operator set says so (the kill switch): the senders drain,
        as on Ctrl-C, and the run's command exits 4."""
        if self.stopped is None and self.gave_up is None:
            self.stopped = reason
            self.say(reason, "stopped", reason=reason)
        self.give_up(reason)

    def _watch_failure_rate(self) -> None:
        """The kill switch, once per look: on nodes too the tally is the ledger's, so it stops every sender."""
        if self.kill_switch is None or self.stopping:
            return
        tally = self.distribution.tally()
        reason = self.kill_switch.tripped(*tally.failing())
        if reason:
            self.stop_on_purpose(reason)

    def stop_now(self) -> None:
        """Nothing is in flight anywhere: the drain has nothing to wait for."""
        self.stop_at = self.clock.monotonic()

    def _watch_outage(self) -> None:
        """Say when the senders pause because the endpoint is down, and when they resume; bound the pause."""
        reason = self.pause.observe(self.distribution.outage_since(), self.say)
        if reason and not self.stopping:
            self.give_up(reason)

    def heartbeat(self) -> None:
        """Renew the lease once a second."""
        if self.clock.monotonic() - self.renewed_at >= HEARTBEAT_INTERVAL:
            self.renew()

    def renew(self, frontier: tuple[float, int] | None = None) -> None:
        """Renew the lease now; a new dispatch frontier is written (and committed) with it."""
        self.ledger.renew_lease(self.run_id, self.holder, frontier)
        self.renewed_at = self.clock.monotonic()

    def say(self, note: str, event: str, **fields) -> None:
        """A progress note and an event-log line."""
        self.progress.note(note)
        self.events.emit(event, run_id=self.run_id, **fields)


def no_outages() -> AbstractContextManager[None]:
    """For a distribution that waits out no ledger outage: every error ends the pass."""
    return contextlib.nullcontext()
