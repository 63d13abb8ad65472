"""The library entry points behind the CLI: ``bill`` a new run, ``rerun`` an existing one.

Each opens the ledger, sends one pass, and returns a :class:`RunResult`; the CLI
only parses options and prints.

A ``bill`` first claims its run id (:meth:`Store.claim_run`: insert or fail, naming the
live process that holds it); nothing but that claimer, and only while nothing of the
run was sent, ever removes the run again.

The same customers at the same destination are billed once per run id, whatever was
edited. Without ``--run-id``, each row's idempotency key is derived from the destination
(method, URL template and key header: not the body or header templates) and the row's
id, so a ``bill`` sent again — identical, or with a fixed typo, on the same ledger or on
a fresh one — sends the keys the API has already seen. On the same ledger it is found
before anything is sent: the identical command matches an earlier run's fingerprint
(request and input content), which is named instead; an edited one finds its rows sent
to the same destination by an earlier run and is refused. Billing the same customers
again on purpose takes a new ``--run-id``: keys are then ``<run-id>:<row id>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from engine.backend import Backend
from engine.config import RunSettings
from engine.errors import LedgerUnavailable, UsageError
from engine.ledger import BUSY_TIMEOUT, RunExists, Store, open_store
from engine.ledger.lease import HEARTBEAT_INTERVAL, Hold, Holder, chunk_silent_for
from engine.ledger.selection import Selection, opted_in
from engine.local.limits import fit_open_files
from engine.output.events import EventLog
from engine.output.progress import Progress
from engine.output.report import summarize
from engine.request.inputs import detect_format, read_rows
from engine.request.spec import RequestSpec
from engine.request.template import CompiledRequest
from engine.run.loading import load_rows
from engine.run.passes import Pass, PassTally, rerun_command
from engine.run.signals import StopRequest, sigterm_interrupts
from engine.states import IN_FLIGHT, PENDING, REJECTED, RESEND_STATES, RETRYING, SELECTED, UNKNOWN

#: Exit code of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130
#: Characters of the request fingerprint in a default idempotency key.
KEY_PREFIX_CHARS = 16


@dataclass(frozen=True)
class RunResult:
    """How a pass ended: the run's summary, whether it was interrupted, and anything to tell."""

    run_id: str
    db: str
    summary: dict
    interrupted: bool = False
    #: Why the pass stopped before every row was final (e.g. the endpoint stayed down).
    gave_up: str | None = None
    #: This command had been run before: the summary is of that earlier run; nothing was sent.
    already_billed: bool = False

    @property
    def complete(self) -> bool:
        return self.summary["succeeded"] == self.summary["total"]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return 0 if self.complete else 1

    @property
    def rerun_command(self) -> str:
        return rerun_command(self.run_id, self.db)


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def bill(
    *,
    db: str,
    input_path: str,
    settings: RunSettings,
    fmt: str | None = None,
    run_id: str | None = None,
    not_before: float | None = None,
    log_file: str | None = None,
    quiet: bool = False,
    busy_timeout: float = BUSY_TIMEOUT,
    broker: str | None = None,
) -> RunResult:
    """Load ``input_path`` into a new run (write-ahead), then send every row once (through worker
    nodes when ``broker`` names one)."""
    _check_broker(broker, db, settings)
    fmt = detect_format(input_path, fmt)
    settings = fit_open_files(settings)
    spec = settings.request_spec()  # template and environment errors surface before the ledger is touched
    request = CompiledRequest(spec)
    fingerprint = settings.request_fingerprint()
    key_prefix = run_id or settings.destination_fingerprint()[:KEY_PREFIX_CHARS]
    on_purpose = run_id is not None  # an explicit --run-id bills its rows, whatever was sent before
    run_id = run_id or new_run_id()
    holder = Holder.this_process()
    with (
        open_store(db, busy_timeout=busy_timeout) as ledger,
        ledger.recording(),
        EventLog(log_file) as events,
        contextlib.ExitStack() as backend_scope,
    ):
        _claim_run(ledger, run_id, holder, input_path, settings, not_before)
        source = "<stdin>" if input_path == "-" else input_path
        # the workers start (imports, curl handles) while the input loads; they send nothing yet
        early = not_before is None and broker is None
        backend = backend_scope.enter_context(start_backend(settings, spec)) if early else None
        digest = hashlib.sha256(f"{fingerprint}\n{key_prefix}\n".encode())
        try:
            ledger.drop_abandoned_loads()  # loads whose process died (killed, disk full): never sent
            with Progress(0, "loading rows", quiet) as progress, sigterm_interrupts():
                total = load_rows(
                    ledger,
                    run_id,
                    read_rows(input_path, fmt, settings.id_field),
                    settings,
                    request,
                    source,
                    on_progress=_with_heartbeat(ledger, run_id, holder, progress.count),
                    key_prefix=key_prefix,
                    digest=digest,
                )
            earlier = ledger.finish_load(run_id, total, digest.hexdigest())
            if earlier is None and not on_purpose:
                _refuse_rows_sent_elsewhere(ledger, run_id, settings)
        except BaseException:
            backend_scope.close()
            with contextlib.suppress(LedgerUnavailable), ledger.recording():
                ledger.drop_load(run_id, holder)  # on a full disk this may fail too: the next bill drops it
            raise
        if earlier is not None:
            backend_scope.close()
            ledger.drop_load(run_id, holder)
            return RunResult(earlier, ledger.location, summarize(ledger, earlier), already_billed=True)
        events.emit("run_start", run_id=run_id, total=total, url=settings.url, method=settings.method)
        plan = PassPlan(ledger, run_id, settings, spec, (PENDING,), not_before, events, quiet, broker)
        return _send_pass(plan, backend, holder)


def _check_broker(broker: str | None, db: str, settings: RunSettings) -> None:
    """Worker nodes on other machines write to the ledger too: it must be a database server."""
    if broker is None:
        return
    if not db.startswith(("postgresql://", "postgres://")):
        raise UsageError("--broker needs a ledger every node can reach: --db postgresql://user@host/dbname")
    if not settings.idempotency:
        raise UsageError("--broker needs idempotency keys: a chunk whose node dies is delivered again")


def start_backend(settings: RunSettings, spec: RequestSpec) -> Backend:
    """The workers that will send a run's rows (today: a local process pool).

    Imported here, when a pass is about to send: ``status``, ``report`` and ``--help``
    never load libcurl.
    """
    from engine.local.pool import LocalBackend

    return LocalBackend(settings.workers, settings.sender_parts(spec))


def _claim_run(ledger: Store, run_id: str, holder: Holder, input_path: str, settings: RunSettings, not_before) -> None:
    """Claim ``run_id`` before anything is loaded (:class:`LeaseHeld` names a live holder)."""
    try:
        ledger.claim_run(
            run_id,
            holder,
            input=input_path,
            url=settings.url,
            method=settings.method,
            options=settings.to_dict(),
            not_before=not_before,
            timeout=settings.timeout,
        )
    except RunExists:
        raise UsageError(
            f"run {run_id!r} already exists in {ledger.location}; "
            f"finish it with: {rerun_command(run_id, ledger.location)}"
        ) from None


def _with_heartbeat(ledger: Store, run_id: str, holder: Holder, on_progress: Callable[[int], None]):
    """``on_progress``, renewing the run's claim at most every HEARTBEAT_INTERVAL: a load of millions
    of rows outlives a lease's STALE_AFTER, and a holder not heard from would look dead."""
    last = time.monotonic()

    def beat(count: int) -> None:
        nonlocal last
        on_progress(count)
        if time.monotonic() - last >= HEARTBEAT_INTERVAL:
            ledger.renew_lease(run_id, holder)
            last = time.monotonic()

    return beat


def _refuse_rows_sent_elsewhere(ledger: Store, run_id: str, settings: RunSettings) -> None:
    """An edited command (a fixed typo, an added header) is not the identical one, but its rows were
    billed at this destination by an earlier run of this ledger: only an explicit --run-id bills them again."""
    found = ledger.sent_elsewhere(run_id, settings.url, settings.method)
    if found is None:
        return
    other, count = found
    raise UsageError(
        f"{count} rows of this input (same ids) were already sent, or may have been, to {settings.method} "
        f"{settings.url} by run {other!r} in {ledger.location}; nothing was sent. Finish that run with: "
        f"{rerun_command(other, ledger.location)}; to bill them again on purpose, give a new --run-id"
    )


def rerun(
    *,
    db: str,
    run_id: str,
    include_rejected: bool = False,
    include_unknown: bool = False,
    selection: Selection | None = None,
    log_file: str | None = None,
    quiet: bool = False,
    busy_timeout: float = BUSY_TIMEOUT,
    broker: str | None = None,
    **overrides,
) -> RunResult:
    """The later pass: send every row of ``run_id`` that has not succeeded (see RESEND_STATES), or
    exactly the rows of ``selection``. Rejected and unknown rows are sent only on an opt-in
    (``include_rejected``/``include_unknown``, or the selection's own), even if the selection names
    their state: :func:`engine.ledger.selection.opted_in` is the rule."""
    if selection is not None:
        selection = _opt_in(selection, include_rejected, include_unknown)
    with (
        open_store(db, create=False, busy_timeout=busy_timeout) as ledger,
        ledger.recording(),
        EventLog(log_file) as events,
    ):
        run = ledger.get_run(run_id)
        if run["state"] == "loading":
            raise UsageError(
                f"run {run_id!r} never finished loading its input; "
                f"load it again with: python -m engine bill {run['input']} --run-id {run_id} ..."
            )
        settings = fit_open_files(RunSettings.from_dict(run["options"], **overrides))
        _check_broker(broker, db, settings)
        states = (SELECTED,) if selection is not None else resend_states(include_rejected, include_unknown)
        events.emit("rerun_start", run_id=run_id, states=list(states))
        spec = settings.request_spec()
        plan = PassPlan(ledger, run_id, settings, spec, states, run["not_before"], events, quiet, broker, selection)
        return _send_pass(plan)


def resend_states(include_rejected: bool = False, include_unknown: bool = False) -> tuple[str, ...]:
    """The states a rerun sends again: :data:`RESEND_STATES`, and rejected/unknown rows if asked."""
    return opted_in(RESEND_STATES + (REJECTED, UNKNOWN), include_rejected, include_unknown)


def _opt_in(selection: Selection, include_rejected: bool, include_unknown: bool) -> Selection:
    """``selection`` less the rejected/unknown rows nobody opted in to (here or in its filter)."""
    rows = replace(
        selection.rows,
        include_rejected=selection.rows.include_rejected or include_rejected,
        include_unknown=selection.rows.include_unknown or include_unknown,
    )
    return replace(selection, rows=rows.sendable())


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


def _send_pass(plan: PassPlan, backend: Backend | None = None, holder: Holder | None = None) -> RunResult:
    """Take the run's lease, send one pass, give the lease back. ``backend``, if given, was started
    while the input loaded; its owner ends it. ``holder``: the claim of the ``bill`` that loaded the run."""
    ledger, run_id = plan.ledger, plan.run_id
    holder = holder or Holder.this_process()
    hold = ledger.acquire_lease(run_id, holder, plan.settings.timeout)
    clean = False
    try:
        _settle_in_flight(ledger, run_id, plan.settings, hold, plan.events)
        if plan.selection is not None:
            chosen = ledger.select_rows(run_id, plan.selection.rows, plan.selection.row_ids)
            plan.events.emit("selected", run_id=run_id, rows=chosen, filter=plan.selection.rows.describe())
        sender, interrupted = _run_pass(plan, backend, holder, hold)
        clean = sender.clean if sender is not None else hold is None or hold.until <= time.time()
    finally:
        ledger.release_lease(run_id, holder, clean)
    summary = summarize(ledger, run_id)
    plan.events.emit("finish", run_id=run_id, **{k: summary[k] for k in ("succeeded", "failed", "rejected", "pending")})
    return RunResult(run_id, ledger.location, summary, interrupted, gave_up=sender.gave_up if sender else None)


def _run_pass(plan: PassPlan, backend: Backend | None, holder: Holder, hold: Hold | None) -> tuple[Pass | None, bool]:
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
        with Progress(to_send, f"pass {pass_no}", plan.quiet) as progress, contextlib.ExitStack() as backend_scope:
            if plan.broker is not None:
                sender = _broker_pass(plan, pass_no, progress, stop, holder, hold)
                try:
                    return sender, _finish_pass(plan, pass_no, sender, sender.run())
                finally:
                    ledger.end_pass(run_id, pass_no, "interrupted" if sender.interrupted else "finished")
            if backend is None:
                backend = backend_scope.enter_context(start_backend(plan.settings, plan.spec))
            sender = Pass(
                ledger,
                run_id,
                plan.settings,
                plan.states,
                backend,
                progress=progress,
                events=events,
                stop=stop,
                total=to_send,
                holder=holder,
                hold=hold,
            )
            try:
                tally = sender.run()
            finally:
                ledger.end_pass(run_id, pass_no, "interrupted" if sender.interrupted else "finished")
        return sender, _finish_pass(plan, pass_no, sender, tally)


def _finish_pass(plan: PassPlan, pass_no: int, sender, tally: PassTally) -> bool:
    plan.events.emit(
        "pass_end",
        run_id=plan.run_id,
        pass_no=pass_no,
        attempts=tally.attempts,
        succeeded=tally.succeeded,
        not_succeeded=tally.not_succeeded,
        interrupted=sender.interrupted,
        gave_up=sender.gave_up,
    )
    return sender.interrupted


def _broker_pass(
    plan: PassPlan, pass_no: int, progress: Progress, stop: StopRequest, holder: Holder, hold: Hold | None
):
    """The pass for worker nodes; celery is imported only for it."""
    from engine.run.broker_pass import BrokerPass

    assert plan.broker is not None
    return BrokerPass(
        plan.ledger,
        plan.run_id,
        pass_no,
        plan.settings,
        plan.states,
        plan.broker,
        progress=progress,
        events=plan.events,
        stop=stop,
        holder=holder,
        hold=hold,
    )


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
