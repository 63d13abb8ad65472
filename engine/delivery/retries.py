"""After each answer: the row's next state, its retry scheduled in a heap, the gate told, the record made.

Owned by the :class:`~engine.delivery.sender.Sender` that local workers and worker nodes share, so both decide, wait
and count alike. Nothing here sleeps: a retry waits in the heap until it is due.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from collections.abc import Iterable

from engine.delivery.capture import Finished
from engine.delivery.extract import Extractor
from engine.delivery.gate import Gate
from engine.delivery.policy import RetryPolicy
from engine.delivery.records import finished_record
from engine.states import RETRYING
from engine.wire import Dispatch


class Retries:
    """Rows waiting to be sent again (or held until their ``not_before``), and each row's attempts this pass."""

    def __init__(self, policy: RetryPolicy, gate: Gate, secrets: Iterable[str], extractor: Extractor | None = None):
        self.policy, self.gate, self.secrets = policy, gate, tuple(secrets)
        self.extractor = extractor or None  # ``--capture``: compiled once, in this sending process
        self.waiting: list[tuple[float, int, Dispatch]] = []  # (due, rid, row), monotonic
        self.tries: dict[int, int] = {}  # rid -> attempts in this pass, for rows being retried
        self.rng = random.Random()

    def hold(self, row: Dispatch, due: float) -> None:
        """Keep ``row`` until ``due`` (monotonic)."""
        heapq.heappush(self.waiting, (due, row.rid, row))

    def release_due(self, ready: deque[Dispatch]) -> None:
        now = time.monotonic()
        while self.waiting and self.waiting[0][0] <= now:
            ready.append(heapq.heappop(self.waiting)[2])

    def due_in(self, longest: float) -> float:
        """Seconds until the next row is due, at most ``longest``."""
        return min(longest, max(0.0, self.waiting[0][0] - time.monotonic())) if self.waiting else longest

    def settle(self, done: Finished) -> tuple:
        """Decide what the answer means for its row; the attempt's record."""
        row: Dispatch = done.token
        outcome = done.outcome
        attempt = self.tries.get(row.rid, 0) + 1 if self.tries else 1
        decision = self.policy.decide(outcome, attempt, self.rng)
        retry = decision.state == RETRYING
        self.gate.settle(row.rid, outcome, not retry)
        if done.quota_rest is not None:
            self.gate.rest_all(time.monotonic() + done.quota_rest)  # the API's quota is spent until its reset
        if retry:
            self.tries[row.rid] = attempt
            due = time.monotonic() + decision.delay
            self.hold(row, due)
            if outcome.http_status == 429:
                self.gate.rest(due)  # the slot rests too, or it would spin on instant 429s
        elif self.tries:
            self.tries.pop(row.rid, None)
        return finished_record(row, attempt, decision.state, done, self.secrets, self.extractor)

    def drop(self) -> None:
        """Forget every waiting row (they stay as the ledger has them, for a later pass)."""
        self.waiting.clear()
