"""The library entry points behind the CLI: ``bill`` a new run, ``rerun`` an existing one.

Each opens the ledger, sends one pass (:func:`engine.run.pass_plan.send_pass`), and returns a
:class:`RunResult`; the CLI only parses options and prints.

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
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from engine.config import RunSettings
from engine.errors import LedgerUnavailable, UsageError
from engine.ledger import BUSY_TIMEOUT, RunExists, Store, open_store
from engine.ledger.lease import HEARTBEAT_INTERVAL, Holder
from engine.ledger.selection import RowFilter, Selection, opted_in
from engine.local.limits import fit_open_files
from engine.output.events import EventLog
from engine.output.notify import Notice
from engine.output.progress import Progress
from engine.output.report import summarize
from engine.request.inputs import detect_format, read_rows
from engine.request.template import CompiledRequest
from engine.run.killswitch import KillSwitch
from engine.run.loading import load_rows
from engine.run.notices import tell
from engine.run.pass_plan import PassPlan, send_pass, start_backend
from engine.run.result import EXIT_INTERRUPTED, RunResult, rerun_command
from engine.run.signals import sigterm_interrupts
from engine.states import PENDING, REJECTED, RESEND_STATES, SELECTED, UNKNOWN

__all__ = [
    "EXIT_INTERRUPTED",
    "RunResult",
    "bill",
    "claim_new_run",
    "go_on",
    "key_prefix_for",
    "new_run_id",
    "rerun",
    "resend_states",
]

#: Characters of the request fingerprint in a default idempotency key.
KEY_PREFIX_CHARS = 16


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def key_prefix_for(settings: RunSettings, run_id: str | None) -> str:
    """What each row's default idempotency key starts with: the run id given, else the destination's digest."""
    return run_id or settings.destination_fingerprint()[:KEY_PREFIX_CHARS]


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
    kill_switch: KillSwitch | None = None,
    canary: int | None = None,
    notice: Notice | None = None,
) -> RunResult:
    """Load ``input_path`` into a new run (write-ahead), then send every row once (through worker
    nodes when ``broker`` names one). ``canary``: send only the first N rows, then stop on purpose;
    ``notice``: told when the pass ends."""
    if canary is not None and canary < 1:
        raise UsageError("--canary must be at least 1")
    _check_broker(broker, db, settings)
    fmt = detect_format(input_path, fmt)
    settings = fit_open_files(settings)
    spec = settings.request_spec()  # template and environment errors surface before the ledger is touched
    request = CompiledRequest(spec)
    fingerprint = settings.request_fingerprint()
    key_prefix = key_prefix_for(settings, run_id)
    on_purpose = run_id is not None  # an explicit --run-id bills its rows, whatever was sent before
    run_id = run_id or new_run_id()
    holder = Holder.this_process()
    with (
        open_store(db, busy_timeout=busy_timeout) as ledger,
        ledger.recording(),
        EventLog(log_file) as events,
        contextlib.ExitStack() as backend_scope,
    ):
        claim_new_run(ledger, run_id, holder, input_path, settings, not_before)
        source = "<stdin>" if input_path == "-" else input_path
        # the workers start (imports, curl handles) while the input loads; they send nothing yet
        early = not_before is None and broker is None
        backend = backend_scope.enter_context(start_backend(settings, spec)) if early else None
        try:
            ledger.drop_abandoned_loads()  # loads whose process died (killed, disk full): never sent
            with Progress(0, "loading rows", quiet) as progress, sigterm_interrupts():
                total, digest = load_rows(
                    ledger,
                    run_id,
                    read_rows(input_path, fmt, settings.id_field),
                    settings,
                    request,
                    source,
                    on_progress=_with_heartbeat(ledger, run_id, holder, progress.count),
                    key_prefix=key_prefix,
                    digest_seed=f"{fingerprint}\n{key_prefix}\n",
                    ahead=True,  # read and checked on the other core while this one writes
                )
            earlier = ledger.finish_load(run_id, total, digest)
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
        plan = PassPlan(
            ledger,
            run_id,
            settings,
            spec,
            (PENDING,),
            not_before,
            events,
            quiet,
            broker,
            kill_switch=kill_switch,
            canary=canary,
        )
        return tell(notice, send_pass(plan, backend, holder), ledger)


def _check_broker(broker: str | None, db: str, settings: RunSettings) -> None:
    """Worker nodes on other machines write to the ledger too: it must be a database server."""
    if broker is None:
        return
    if not db.startswith(("postgresql://", "postgres://")):
        raise UsageError("--broker needs a ledger every node can reach: --db postgresql://user@host/dbname")
    if not settings.idempotency:
        raise UsageError("--broker needs idempotency keys: a chunk whose node dies is delivered again")


def claim_new_run(
    ledger: Store, run_id: str, holder: Holder, input_path: str, settings: RunSettings, not_before
) -> None:
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
    kill_switch: KillSwitch | None = None,
    notice: Notice | None = None,
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
        plan = PassPlan(
            ledger,
            run_id,
            settings,
            spec,
            states,
            run["not_before"],
            events,
            quiet,
            broker,
            selection,
            kill_switch=kill_switch,
        )
        return tell(notice, send_pass(plan), ledger)


def go_on(**rerun_args) -> RunResult:
    """After a canary, the same run's next pass: exactly the rows it left ``pending``, with their keys."""
    pending = Selection(RowFilter.from_options(states=(PENDING,), default_states=(PENDING,)))
    return rerun(selection=pending, **rerun_args)


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
