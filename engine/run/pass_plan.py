"""One pass of a run, from its plan to its result: the lease taken and given back, the waits
before anything is sent, the distribution chosen (local pool or worker nodes), the pass supervised.

``bill`` and ``rerun`` (:mod:`engine.run.runner`) each end in :func:`send_pass`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace

from engine import tracing
from engine.backend import Backend
from engine.config import RunSettings
from engine.delivery.allocator import collect_less
from engine.ledger import Store
from engine.ledger.lease import HEARTBEAT_INTERVAL, Hold, Holder, chunk_silent_for
from engine.ledger.selection import RowFilter, Selection
from engine.output.events import EventLog
from engine.output.progress import Progress
from engine.output.report import summarize
from engine.request.spec import RequestSpec
from engine.run.killswitch import KillSwitch
from engine.run.passes import LocalPass
from engine.run.result import RunResult
from engine.run.signals import StopRequest
from engine.run.supervisor import Distribution, PassSupervisor, PassTally
from engine.states import IN_FLIGHT, PENDING, RETRYING, SELECTED

#: Rows read per page while choosing a canary's rows.
CANARY_PAGE = 1000


@dataclass(frozen=True)
class PassPlan:
    """What one pass of a run needs, from the ledger it records in to whether it may print."""

    ledger: Store
    run_id: str
    settings: RunSettings
    spec: RequestSpec
    states: tuple[str, ...]
    not_before: float | None
    events: EventLog
    quiet: bool
    #: The Celery broker worker nodes take chunks from; None: the local process pool sends.
    broker: str | None = None
    #: The rows an operator chose to send (marked ``selected`` once the pass holds the run).
    selection: Selection | None = None
    #: Stop the pass when too many rows are refused (None: never).
    kill_switch: KillSwitch | None = None
    #: Send only the first N rows of ``states`` in dispatch order, then stop on purpose (None: all).
    canary: int | None = None


def start_backend(settings: RunSettings, spec: RequestSpec) -> Backend:
    """The workers that will send a run's rows (today: a local process pool).

    Imported here, when a pass is about to send: ``status``, ``report`` and ``--help``
    never load libcurl.
    """
    from engine.local.pool import LocalBackend

    return LocalBackend(settings.workers, settings.sender_parts(spec))


def send_pass(plan: PassPlan, backend: Backend | None = None, holder: Holder | None = None) -> RunResult:
    """Take the run's lease, send one pass, give the lease back. ``backend``, if given, was started
    while the input loaded; its owner ends it. ``holder``: the claim of the ``bill`` that loaded the run."""
    ledger, run_id = plan.ledger, plan.run_id
    holder = holder or Holder.this_process()
    collect_less()
    hold = ledger.acquire_lease(run_id, holder, plan.settings.timeout)
    clean = False
    try:
        _settle_in_flight(ledger, run_id, plan.settings, hold, plan.events)
        if plan.canary is not None:
            plan = canary_plan(plan)
        if plan.selection is not None:
            chosen = ledger.select_rows(run_id, plan.selection.rows, plan.selection.row_ids)
            plan.events.emit("selected", run_id=run_id, rows=chosen, filter=plan.selection.rows.describe())
        supervisor, interrupted = _run_pass(plan, backend, holder, hold)
        clean = supervisor.clean if supervisor is not None else hold is None or hold.until <= time.time()
    finally:
        ledger.release_lease(run_id, holder, clean)
    summary = summarize(ledger, run_id)
    plan.events.emit("finish", run_id=run_id, **{k: summary[k] for k in ("succeeded", "failed", "rejected", "pending")})
    gave_up = supervisor.gave_up if supervisor else None
    stopped = supervisor.stopped if supervisor else None
    if plan.canary is not None and not interrupted and gave_up is None:
        stopped = f"canary: the first {plan.canary} rows were sent; the other {summary['pending']} wait"
    if stopped:
        summary["stopped"] = stopped  # the summary says why the pass stopped on purpose
    return RunResult(run_id, ledger.location, summary, interrupted, gave_up=gave_up, stopped=stopped)


def canary_plan(plan: PassPlan) -> PassPlan:
    """The plan of a canary pass: the first ``plan.canary`` rows of its states, in the order a full
    pass would send them (priority, then input order), chosen as a selection; the rest keep their
    state for ``rerun``, which sends them with the same keys."""
    assert plan.canary is not None
    ids: list[str] = []
    for page in plan.ledger.iter_pages(plan.run_id, plan.states, page=min(plan.canary, CANARY_PAGE)):
        ids.extend(row.row_id for row in page.rows[: plan.canary - len(ids)])
        if len(ids) >= plan.canary:
            break
    rows = RowFilter.from_options(states=plan.states)
    chosen = plan.ledger.select_rows(plan.run_id, rows, ids) if ids else 0
    plan.events.emit("canary", run_id=plan.run_id, rows=chosen)
    return replace(plan, states=(SELECTED,), selection=None)


def _run_pass(
    plan: PassPlan, backend: Backend | None, holder: Holder, hold: Hold | None
) -> tuple[PassSupervisor | None, bool]:
    """The waits before a pass (earlier chunks, ``--not-before``), then the pass; whether it was interrupted."""
    ledger, run_id, events = plan.ledger, plan.run_id, plan.events
    with StopRequest() as stop:
        if not _wait_for_earlier_chunks(plan, stop, lambda: ledger.renew_lease(run_id, holder)):
            return None, True
        to_send = ledger.count_in(run_id, plan.states)
        if to_send and plan.not_before:
            if not _wait_until(plan.not_before, stop, plan.quiet, lambda: ledger.renew_lease(run_id, holder)):
                return None, True
        if not to_send:
            return None, False
        ledger.check_space(to_send)
        pass_no = ledger.start_pass(run_id)
        events.emit("pass_start", run_id=run_id, pass_no=pass_no, rows=to_send)
        with (
            Progress(to_send, f"pass {pass_no}", plan.quiet) as progress,
            contextlib.ExitStack() as backend_scope,
            tracing.span("pass", run_id=run_id, pass_no=pass_no, rows=to_send),
        ):
            supervisor = PassSupervisor(
                ledger,
                run_id,
                plan.settings,
                progress=progress,
                events=events,
                stop=stop,
                holder=holder,
                hold=hold,
                kill_switch=plan.kill_switch,
            )
            distribution = distribute(plan, supervisor, pass_no, to_send, backend, backend_scope)
            try:
                tally = supervisor.run(distribution)
            finally:
                ledger.end_pass(run_id, pass_no, "interrupted" if supervisor.interrupted else "finished")
            tracing.annotate_current(
                attempts=tally.attempts, succeeded=tally.succeeded, not_succeeded=tally.not_succeeded
            )
        return supervisor, _finish_pass(plan, pass_no, supervisor, tally)


def distribute(
    plan: PassPlan,
    supervisor: PassSupervisor,
    pass_no: int,
    total: int,
    backend: Backend | None,
    backend_scope: contextlib.ExitStack,
) -> Distribution:
    """The one place a pass's senders are chosen: worker nodes when the plan names a broker
    (celery is imported only then), else the local pool (``backend``, or one started here and
    ended with ``backend_scope``)."""
    if plan.broker is not None:
        from engine.run.broker_pass import BrokerPass

        return BrokerPass(supervisor, pass_no, plan.states, plan.broker)
    if backend is None:
        backend = backend_scope.enter_context(start_backend(plan.settings, plan.spec))
    return LocalPass(supervisor, plan.states, backend, total=total)


def _finish_pass(plan: PassPlan, pass_no: int, supervisor: PassSupervisor, tally: PassTally) -> bool:
    plan.events.emit(
        "pass_end",
        run_id=plan.run_id,
        pass_no=pass_no,
        attempts=tally.attempts,
        succeeded=tally.succeeded,
        not_succeeded=tally.not_succeeded,
        interrupted=supervisor.interrupted,
        gave_up=supervisor.gave_up,
        stopped=supervisor.stopped,
    )
    return supervisor.interrupted


def _settle_in_flight(ledger: Store, run_id: str, settings: RunSettings, hold: Hold | None, events: EventLog) -> None:
    """Rows of a run without keys that an earlier pass handed out and never saw answered.

    After a clean end they were never sent (a drained worker's queue) and are pending again.
    After a crash nobody knows: they, and rows whose retry was scheduled, become ``unknown``.
    """
    if settings.idempotency:
        return
    if hold is None:
        ledger.mark_state(run_id, (IN_FLIGHT,), PENDING)
        return
    count = ledger.mark_unknown(
        run_id, (IN_FLIGHT, RETRYING), "outcome unknown: the pass sending it stopped before an answer was recorded"
    )
    if count:
        events.emit("marked_unknown", run_id=run_id, rows=count)


def _clock(when: float) -> str:
    """``HH:MM:SS``, with the date when it is not today."""
    same_day = time.localtime(when)[:3] == time.localtime()[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.localtime(when))


def _wait_for_earlier_chunks(plan: PassPlan, stop: StopRequest, heartbeat) -> bool:
    """Chunks an earlier pass gave worker nodes (a coordinator killed mid-run): those not taken are
    retired, and a chunk a live node is still sending is waited for, so no row goes out twice at
    once. False if the user stopped the wait (nothing was sent)."""
    settings = plan.settings
    silent_for = chunk_silent_for(settings.stall_timeout, settings.timeout)
    said = 0
    with Progress(0, "waiting", plan.quiet) as progress:
        while sending := plan.ledger.retire_chunks(plan.run_id, silent_for):
            if stop.count:
                return False
            if sending != said:
                progress.note(f"waiting for {sending} chunks worker nodes are still sending for an earlier pass")
                said = sending
            heartbeat()
            time.sleep(HEARTBEAT_INTERVAL)
    return True


def _wait_until(when: float, stop: StopRequest, quiet: bool, heartbeat) -> bool:
    """Count down to ``when``; False if the user stopped the wait (nothing was sent)."""
    with Progress(0, "waiting", quiet) as progress:
        last_shown = None
        beat = time.monotonic()
        while (left := when - time.time()) > 0:
            if stop.count:
                return False
            shown = int(left)
            if shown != last_shown and (progress.tty or shown % 10 == 0 or last_shown is None):
                progress.note(f"nothing is sent before {_clock(when)}: {shown} s left")
                last_shown = shown
            if time.monotonic() - beat >= HEARTBEAT_INTERVAL:
                heartbeat()
                beat = time.monotonic()
            time.sleep(min(0.2, left))
    return True
