"""Sending one chunk's rows to a final state with one CurlMulti: what a worker node does per chunk.

Rows start as slots free up and the :class:`~engine.delivery.gate.Gate` allows (outage pause,
rate); a retryable failure waits its back-off (or the server's ``Retry-After``) in
:class:`~engine.delivery.retries.Retries` while the other transfers go on; nothing sleeps
while transfers are in flight. The result is the attempt records of every row, for the
ledger to commit together with the chunk's done-mark.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from engine.delivery.fence import Fence
from engine.delivery.gate import PROBE, WAIT, Gate
from engine.delivery.policy import RetryPolicy
from engine.delivery.records import unsendable_record
from engine.delivery.retries import Retries
from engine.delivery.transport import Transport, TransportOptions
from engine.request.spec import RequestSpec
from engine.request.template import RowRequests
from engine.wire import Dispatch

#: Longest wait for transfers in one poll (s): the fence and due retries are looked at this often.
POLL = 0.05


class ChunkSender:
    """One CurlMulti with ``window`` transfers at most, reused chunk after chunk."""

    def __init__(
        self, spec: RequestSpec, id_field: str, policy: RetryPolicy, options: TransportOptions, window: int, gate: Gate
    ):
        self.requests = RowRequests(spec, id_field)
        self.transport = Transport(window, options, spec.method)
        self.gate = gate
        self.retries = Retries(policy, gate, spec.secrets)
        self.dropped = 0  # rows of the last chunk not started because its claim may be gone

    def send(
        self,
        rows: list[Dispatch],
        fence: Fence | None = None,
        stopped: Callable[[], bool] = lambda: False,
    ) -> list[tuple]:
        """Every row to a final state (or its last attempt); the attempt records, in the order they ended.

        The ``fence`` is renewed as it falls due, and asked before each transfer starts: once it says
        the claim may be gone (lost, or not renewed within its lease), nothing new starts and the
        rows not started are dropped (:attr:`dropped` counts them): another node may be sending them.
        Once ``stopped()`` says so, nothing new starts either: what is in flight finishes and is
        recorded, and the rows not started are left as they are (for a rerun).
        """
        fence = fence or Fence(float("inf"))
        ready = deque(rows)
        records: list[tuple] = []
        self.dropped = 0
        while ready or self.retries.waiting or self.transport.active:
            fence.keep()
            self.retries.release_due(ready)
            if (ready or self.retries.waiting) and not fence.valid():
                self.dropped += len(ready) + len(self.retries.waiting)
                self._drop(ready)
            if (
                ready or self.retries.waiting
            ) and stopped():  # before starting: a chunk taken after the stop sends nothing
                self._drop(ready)
            wait = self._start_ready(ready, records, fence)
            records.extend(map(self.retries.settle, self.transport.poll(self.retries.due_in(wait))))
        return records

    def _drop(self, ready: deque[Dispatch]) -> None:
        ready.clear()
        self.retries.drop()

    def _start_ready(self, ready: deque[Dispatch], records: list[tuple], fence: Fence) -> float:
        """Start rows while the window has room, the gate allows and the claim holds; how long to poll
        before trying again."""
        window = self.transport.window(self.gate.window())
        while ready and self.transport.active < window and fence.valid():
            permit = self.gate.permit()
            if permit == WAIT:
                return min(POLL, self.gate.pace_ends_in()) or POLL
            row = self.gate.take_probe(ready) if permit == PROBE else ready.popleft()
            try:
                self.transport.start(row, *self.requests.render(row.row_id, row.payload, row.idempotency_key))
            except Exception as err:  # a row the coordinator validated should never get here
                records.append(unsendable_record(row, err))
            if permit == PROBE:  # one row asks whether the endpoint is back; nothing else starts
                break
        return POLL

    def close(self) -> None:
        self.transport.close()
