"""``reconcile``: settle rows whose outcome is unknown by asking the API whether it charged them.

A row is ``unknown`` when its answer was lost after the request may have been applied (runs
without idempotency keys): resending it may charge twice, never resending it may charge nobody.
The API can often say which: each chosen row is looked up with one ``GET`` of ``--lookup-url``
(``{key}`` is the row's idempotency key, ``{field}`` any field of its payload), sent as the run
sends (its headers and ``${VAR}`` secrets, its rate, retries and outage pause) through the one
:class:`~engine.delivery.sender.Sender` start loop, in this process. A ``GET`` is safe to retry,
so every retryable failure is retried with back-off. The answer settles the row:

- 2xx: the API has the charge: ``succeeded``;
- 404: never charged: ``pending``, so a plain ``rerun`` sends it, and only such rows — but only
  once the row's last attempt can no longer be in progress at the API (its last change plus the
  run's ``--timeout`` + 1 s): a charge still being made answers 404 too, so a 404 before then
  leaves the row as it was ("reconcile again after HH:MM:SS");
- anything else (a timeout, a 5xx after its retries, a 401...): left as it was.

Each lookup is recorded as an attempt of its row, its error starting with :data:`LOOKUP`. Reconcile
holds the run's lease, so it never runs beside a pass of the run; it waits out what a pass that
died may still have in progress (a lookup of a charge still being made would answer 404), and
leaves such a lease ownerless again, so the next pass still settles that pass's rows in flight.

Captures (``--capture``): the lookup's sender is built from the run's stored settings
(:meth:`RunSettings.sender_parts`), so whatever a run captures from a 2xx answer is captured
from the lookup's 2xx the same way: :func:`settle` is the one place a lookup's answer is mapped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.config import RunSettings
from engine.errors import DestinationError, TemplateError, UsageError
from engine.ledger import BUSY_TIMEOUT, Store, open_store
from engine.ledger.lease import HEARTBEAT_INTERVAL, HOLD_MARGIN, STALE_AFTER, Hold, Holder
from engine.ledger.selection import RowFilter
from engine.ledger.store import LeaseLost
from engine.request.spec import RequestSpec, origin_of, parse_allowed_host, redact
from engine.request.template import CompiledRequest
from engine.run.pause import PauseClock, PausePeriods
from engine.run.result import EXIT_INTERRUPTED
from engine.run.signals import StopRequest
from engine.sender_parts import SenderParts
from engine.states import KEY_CONFLICT, PENDING, REJECTED, SUCCEEDED, UNKNOWN
from engine.wire import Attempt, Dispatch

if TYPE_CHECKING:
    from engine.delivery.breaker import CircuitBreaker

log = logging.getLogger(__name__)

#: The states reconcile may settle: rows that may have been charged, whose outcome the API can tell.
RECONCILABLE = (UNKNOWN, KEY_CONFLICT, REJECTED)
#: The lookup URL's placeholder for the row's idempotency key (it shadows a payload field of that name).
KEY_FIELD = "key"
#: The lookup's answer meaning "no such charge".
NOT_FOUND = 404
#: How every lookup's attempt error starts: a lookup is told apart from a charge in the ledger.
LOOKUP = "lookup: "
#: Rows read and looked up at a time (results are recorded between pages).
PAGE = 500
#: The process context of the sender's shared breaker and pacer (one process: no child is started).
_CONTEXT = multiprocessing.get_context("spawn")


@dataclass
class ReconcileResult:
    """What a reconcile found: rows the API charged, did not charge, and could not tell."""

    run_id: str
    db: str
    charged: int = 0
    not_charged: int = 0
    still_unknown: int = 0
    dry_run: bool = False
    interrupted: bool = False
    #: Why the lookups stopped before every row was asked (the endpoint stayed down).
    gave_up: str | None = None

    @property
    def exit_code(self) -> int:
        """130 when interrupted, 1 while some rows stay unsettled (or unasked), else 0."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return 1 if self.still_unknown or self.gave_up else 0


def reconcile(
    *,
    db: str,
    run_id: str,
    lookup_url: str,
    rows: RowFilter | None = None,
    allow_hosts: Iterable[str] = (),
    dry_run: bool = False,
    busy_timeout: float = BUSY_TIMEOUT,
) -> ReconcileResult:
    """Look up every row of ``run_id`` matching ``rows`` at ``lookup_url`` and settle it (``dry_run``:
    ask, count, change nothing); ``rows`` defaults to the ``unknown`` ones. :class:`LeaseHeld` while a
    pass of the run is going."""
    rows = rows or RowFilter(states=(UNKNOWN,))
    refused = [state for state in rows.states if state not in RECONCILABLE]
    if refused or not rows.states:
        raise UsageError(f"reconcile settles only {', '.join(RECONCILABLE)} rows, not {', '.join(refused) or 'none'}")
    with open_store(db, create=False, busy_timeout=busy_timeout) as ledger, ledger.recording():
        settings = RunSettings.from_dict(ledger.get_run(run_id)["options"])
        parts = lookup_parts(settings, lookup_spec(settings, lookup_url, allow_hosts))
        result = ReconcileResult(run_id, ledger.location, dry_run=dry_run)
        holder = Holder.this_process()
        hold = ledger.acquire_lease(run_id, holder, settings.timeout)
        try:
            with StopRequest() as stop:
                renew = _renewal(ledger, run_id, holder)
                result.interrupted = not _wait_out(hold, stop, renew)
                if not result.interrupted:
                    _look_up(ledger, run_id, rows, parts, renew, stop, settings, result)
        finally:
            # a dead pass's lease stays ownerless: the next pass settles what that pass had in flight
            ledger.release_lease(run_id, holder, clean=hold is None)
    return result


def lookup_spec(settings: RunSettings, url: str, allow_hosts: Iterable[str]) -> RequestSpec:
    """``GET url`` with the run's headers and secrets, no body and no idempotency header; its host
    must be one the run may reach (its URL's, its ``--allow-host``) or one of ``allow_hosts``."""
    try:
        spec = RequestSpec.build(
            url,
            method="GET",
            header_lines=settings.headers,
            allow_hosts=(*settings.allow_hosts, *allow_hosts),
            idempotency_header=None,
        )
        dynamic = CompiledRequest(spec).host_is_dynamic
    except (UsageError, TemplateError) as err:  # the spec's errors name the option they usually come from
        raise type(err)(str(err).replace("--url", "--lookup-url", 1)) from None
    scheme = origin_of(spec.url)[0]
    allowed = settings.request_spec().allowed_origins | {parse_allowed_host(host, scheme) for host in allow_hosts}
    if not dynamic:  # else each rendered URL is checked against ``allowed`` as it is sent
        origin = origin_of(spec.url)
        if origin not in allowed:
            shown = redact(spec.url, spec.secrets)
            raise DestinationError(
                f"--lookup-url {shown!r} leaves the run's allowed hosts ({origin[0]}://{origin[1]}:{origin[2]});"
                f" allow it with --allow-host {origin[1]}:{origin[2]}"
            )
    return dataclasses.replace(spec, allowed_origins=frozenset(allowed))


def lookup_parts(settings: RunSettings, spec: RequestSpec) -> SenderParts:
    """The run's sender parts for ``spec``: a GET has no body and no effect, so every retryable failure
    is retried (as with keys) and libcurl may resend it on a dead reused connection."""
    parts = settings.sender_parts(spec)
    return dataclasses.replace(
        parts,
        policy=dataclasses.replace(parts.policy, idempotent=True),
        transport=dataclasses.replace(parts.transport, resend_harmless=True),
    )


def _renewal(ledger: Store, run_id: str, holder: Holder) -> Callable[[], bool]:
    """The lease's heartbeat, as a :class:`~engine.delivery.fence.Fence` asks it: False once it is lost."""

    def renew() -> bool:
        try:
            ledger.renew_lease(run_id, holder)
        except LeaseLost:
            return False
        return True

    return renew


def _wait_out(hold: Hold | None, stop: StopRequest, renew: Callable[[], bool]) -> bool:
    """Wait until what a dead pass may have in flight has timed out; False if the user stopped it."""
    while hold is not None and (left := hold.until - time.time()) > 0:
        if stop.count:
            return False
        log.info("waiting %.0f s for requests a stopped pass may still have in progress", left)
        renew()
        time.sleep(min(HEARTBEAT_INTERVAL, left))
    return True


def _look_up(
    ledger: Store,
    run_id: str,
    rows: RowFilter,
    parts: SenderParts,
    renew: Callable[[], bool],
    stop: StopRequest,
    settings: RunSettings,
    result: ReconcileResult,
) -> None:
    """Page by page: look the rows up, settle them, record (unless a dry run), count."""
    from engine.delivery.breaker import CircuitBreaker
    from engine.delivery.fence import Fence
    from engine.delivery.gate import Gate
    from engine.delivery.ratelimit import Pacer
    from engine.delivery.sender import Sender  # libcurl is loaded only when something is sent

    breaker = CircuitBreaker.create(_CONTEXT, parts.breaker)
    sender = Sender(parts, Gate(breaker, Pacer.create(_CONTEXT, parts.rate, 1, parts.window)))
    ending = _Ending(stop, breaker, settings.max_pause)
    quiet_after = settings.timeout + HOLD_MARGIN  # a row's last attempt can be in progress until then
    fence = Fence(STALE_AFTER, renew)
    after = 0
    try:
        while not ending() and (page := ledger.find_rows(run_id, rows, after_rid=after, limit=PAGE)):
            after = page[-1]["rid"]
            records = sender.send([_dispatch(row, settings.id_field) for row in page], fence, ending)
            if fence.lost:
                raise LeaseLost(f"run {run_id!r}: another process took over this run's lease; stopping")
            settled = settle(
                records,
                {row["rid"]: row["status"] for row in page},
                {row["rid"]: (row["updated_at"] or 0.0) + quiet_after for row in page},
            )
            if not result.dry_run:
                ledger.record(settled)
            _count(settled, len(page), result)
    finally:
        sender.close()
    result.interrupted = bool(stop.count)
    result.gave_up = ending.gave_up


def _dispatch(row: dict, id_field: str) -> Dispatch:
    """A found row as the sender takes it, its idempotency key in the payload as ``{key}`` and its id
    as the run's id field (a payload dropped by ``--keep-payload`` still has both)."""
    fields = json.loads(row["payload"]) if row["payload"] else {}
    fields.setdefault(id_field, row["row_id"])
    fields[KEY_FIELD] = row["idempotency_key"]
    return Dispatch(row["rid"], row["row_id"], json.dumps(fields), row["idempotency_key"], row["attempts"] or 0)


def settle(records: list[tuple], states: dict[int, str], quiet_from: dict[int, float]) -> list[tuple]:
    """The lookup's attempt records, each with its row's new state (``states``: each row's state
    before the lookup, kept unless the answer settles it) and an error saying it was a lookup.
    A 404 settles a row only if it was asked once nothing of the row can still be in progress at
    the API (``quiet_from``: when that is, per row)."""
    settled = []
    for attempt in map(Attempt._make, records):
        status = attempt.http_status
        if attempt.outcome == SUCCEEDED:
            state, error = SUCCEEDED, f"{LOOKUP}charged (HTTP {status})"
        elif attempt.outcome == REJECTED and status == NOT_FOUND and attempt.started_at < quiet_from[attempt.rid]:
            state = states[attempt.rid]
            after = time.strftime("%H:%M:%S", time.localtime(quiet_from[attempt.rid]))
            error = (
                f"{LOOKUP}not found yet, but its last attempt may still be in progress; reconcile again after {after}"
            )
        elif attempt.outcome == REJECTED and status == NOT_FOUND:
            state, error = PENDING, f"{LOOKUP}not charged (HTTP {status})"
        else:
            state = states[attempt.rid]
            error = f"{LOOKUP}{attempt.error or f'HTTP {status}'}; still {state}"
        settled.append(tuple(attempt._replace(outcome=state, error=error)))
    return settled


def _count(settled: list[tuple], looked_up: int, result: ReconcileResult) -> None:
    """Add a page's verdicts to ``result``: rows not settled (or not asked: stopped) stay as they were."""
    outcomes = [Attempt._make(record) for record in settled]
    charged = sum(1 for attempt in outcomes if attempt.outcome == SUCCEEDED)
    not_charged = sum(1 for attempt in outcomes if attempt.outcome == PENDING)
    result.charged += charged
    result.not_charged += not_charged
    result.still_unknown += looked_up - charged - not_charged


class _Ending:
    """Whether the lookups should stop: Ctrl-C/SIGTERM, or the endpoint down (the outage pause open)
    longer than ``--max-pause`` in all, bounded by the pass's own :class:`PauseClock` (rows not asked
    stay as they are)."""

    def __init__(self, stop: StopRequest, breaker: CircuitBreaker, max_pause: float):
        self.stop, self.breaker = stop, breaker
        self.pause = PauseClock(max_pause, _Unrecorded())
        self.gave_up: str | None = None

    def __call__(self) -> bool:
        if self.stop.count or self.gave_up:
            return True
        down_since = self.breaker.opened_at() if self.breaker.is_open() else None
        self.gave_up = self.pause.observe(down_since, _log_note)
        return self.gave_up is not None


class _Unrecorded(PausePeriods):
    """A reconcile's pauses are not a pass's: they are logged, not written to the ledger."""

    def __init__(self):
        pass

    def note(self, reason: str, paused: bool) -> None:
        pass


def _log_note(note: str, event: str, **fields) -> None:
    log.info("%s", note)
