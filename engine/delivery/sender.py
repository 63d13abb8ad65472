"""One sending process's transfers: the start loop that a local worker and a worker node share.

A :class:`Sender` owns one CurlMulti (:class:`~engine.delivery.transport.Transport`), the rows
ready to start, the retries waiting their back-off (:class:`~engine.delivery.retries.Retries`)
and the attempt records not yet handed on. Rows start while the window has room, the
:class:`~engine.delivery.gate.Gate` allows (outage pause and its probe, rate, resting slots) and,
on nodes, the claim's :class:`~engine.delivery.fence.Fence` holds; a row that cannot even be
started is quarantined. Nothing sleeps while transfers are in flight.

The local worker drives it turn by turn (:meth:`Sender.start`, :meth:`Sender.poll`) between
reading its inbox and reporting; a node hands it one chunk at a time (:meth:`Sender.send`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from engine.auth.oauth import TokenError
from engine.auth.tokens import FETCH_RETRY, Authorizer, SharedToken, TokenUnavailable
from engine.delivery.capture import Finished
from engine.delivery.extract import Extractor
from engine.delivery.fence import Fence
from engine.delivery.gate import PROBE, WAIT, Gate
from engine.delivery.records import unsendable_record
from engine.delivery.retries import Retries
from engine.delivery.transport import Transport
from engine.request.template import RowRequests
from engine.sender_parts import SenderParts
from engine.wire import Dispatch

log = logging.getLogger(__name__)

#: Longest wait for transfers in one poll of :meth:`Sender.send` (s): the fence and due retries
#: are looked at this often.
POLL = 0.05
#: The answer that says the access token was refused: the row is sent once more with a new one.
UNAUTHORIZED = 401


class Sender:
    """Up to ``parts.window`` transfers on one CurlMulti, reused row after row and chunk after chunk.

    ``wake_fd``, if given, ends a wait as soon as it is readable (a local worker's inbox). ``tokens``
    holds the machine's OAuth2 access token (``--oauth2-token-url``) shared with the other senders.
    """

    def __init__(self, parts: SenderParts, gate: Gate, wake_fd: int | None = None, tokens: SharedToken | None = None):
        oauth = parts.spec.oauth
        self.authorizer = (
            Authorizer(oauth, tokens or SharedToken.create_local(), parts.transport.timeout) if oauth else None
        )
        self.reauthorized: set[int] = set()  # rows sent again after a 401, once each
        self.requests = RowRequests(parts.spec, parts.id_field, self.authorizer)
        self.transport = Transport(parts.window, parts.transport, parts.spec.method, wake_fd)
        self.gate = gate
        # retries and held rows wait here
        self.retries = Retries(parts.policy, gate, parts.spec.secrets, Extractor(parts.captures))
        self.ready: deque[Dispatch] = deque()
        self.records: list[tuple] = []  # attempt records not yet handed on
        self.dropped = 0  # rows of the last chunk not started because its claim may be gone

    def start(self, fence: Fence | None = None) -> bool:
        """Start ready rows while the window has room, the gate allows and the ``fence`` (if any) holds.

        False when the gate said wait (the outage pause, or the rate). A probe row asks alone
        whether the endpoint is back: nothing else starts after it in this turn.
        """
        ready, transport, gate = self.ready, self.transport, self.gate
        window = transport.window(gate.window())
        while ready and transport.active < window and (fence is None or fence.valid()):
            permit = gate.permit()
            if permit == WAIT:
                return False
            if permit == PROBE:
                self._start(gate.take_probe(ready), fence)
                return True
            self._start(ready.popleft(), fence)
        return True

    def _start(self, row: Dispatch, fence: Fence | None = None) -> None:
        """Start the row's transfer (the ``fence`` asked once more just before it is sent); a row that cannot
        even be started is quarantined and the sender goes on: re-queued, it would only take down process
        after process."""
        try:
            url, headers, body = self.requests.render(row.row_id, row.payload, row.idempotency_key)
            self.transport.start(row, url, headers, body, None if fence is None else fence.valid)
        except TokenUnavailable as err:  # not sent: the row waits for the token, its attempt unspent
            log.debug("row %s waits for an access token: %s", row.row_id, err)
            self.retries.hold(row, time.monotonic() + FETCH_RETRY)
        except Exception as err:  # a row the coordinator validated should never get here
            log.debug("row %s quarantined: %s", row.row_id, err)
            self.records.append(unsendable_record(row, err))

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds, settle what ended (record, retry, gate told); how many ended.
        A transfer its fence stopped before it was sent is dropped with the rows not started."""
        finished = self.transport.poll(timeout)
        if any(done.fenced for done in finished):
            for done in finished:
                if done.fenced:
                    self.dropped += 1
                    self.gate.unsent(done.token.rid)
            finished = [done for done in finished if not done.fenced]
        if self.authorizer is not None:
            self.retries.secrets = self.requests.compiled.spec.secrets + self.authorizer.secrets()
            finished = [done for done in finished if not self._reauthorize(done)]
        self.records.extend(map(self.retries.settle, finished))
        return len(finished)

    def _reauthorize(self, done: Finished) -> bool:
        """A row's first 401 refreshes the token (unless another transfer already did) and sends the row
        again at once: not an attempt spent, nothing recorded. Its second 401 is settled as any answer."""
        row: Dispatch = done.token
        if done.outcome.http_status != UNAUTHORIZED or row.rid in self.reauthorized:
            self.reauthorized.discard(row.rid)
            return False
        self.reauthorized.add(row.rid)
        self.gate.settle(row.rid, done.outcome)  # an answer: the endpoint is up
        try:
            self.authorizer.unauthorized(done.started_at)  # type: ignore[union-attr]
        except TokenError:
            pass  # the row's next start waits for the token, or is quarantined with the reason
        log.info("row %s: 401, sent again with a new access token", row.row_id)
        self.ready.appendleft(row)
        return True

    def release_due(self) -> None:
        """Move the retries and held rows that are due to the ready queue."""
        self.retries.release_due(self.ready)

    def take_records(self) -> list[tuple]:
        """The attempt records since the last call, in the order they ended."""
        records, self.records = self.records, []
        return records

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
        ready, retries = self.ready, self.retries
        ready.clear()  # nothing of a chunk whose send was cut short (an error) goes out under this claim
        ready.extend(rows)
        self.records = []
        self.dropped = 0
        while ready or retries.waiting or self.transport.active:
            if fence is not None:
                fence.keep()
            retries.release_due(ready)
            if (ready or retries.waiting) and fence is not None and not fence.valid():
                self.dropped += len(ready) + len(retries.waiting)
                self.drop()
            if (ready or retries.waiting) and stopped():  # before starting: a chunk taken after a stop sends nothing
                self.drop()
            wait = POLL if self.start(fence) else min(POLL, self.gate.pace_ends_in()) or POLL
            self.poll(retries.due_in(wait))
        return self.take_records()

    def drop(self) -> None:
        """Forget the rows not started and the retries waiting (they stay as the ledger has them)."""
        self.ready.clear()
        self.retries.drop()

    def close(self) -> None:
        self.transport.close()
