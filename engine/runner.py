"""The library entry points behind the CLI: ``bill`` a new run, ``rerun`` an existing one.

Each opens the ledger, sends one pass, and returns a :class:`RunResult`; the CLI
only parses options and prints.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from engine.config import RunSettings
from engine.coordinator import Pass, StopRequest, load_rows, start_pool
from engine.errors import UsageError
from engine.events import EventLog
from engine.inputs import detect_format, read_rows
from engine.ledger import RESEND_STATES, Ledger
from engine.policy import PENDING, REJECTED, UNKNOWN
from engine.progress import Progress
from engine.report import summarize

#: Exit code of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RunResult:
    """How a pass ended: the run's summary and whether it was interrupted."""

    run_id: str
    db: str
    summary: dict
    interrupted: bool = False

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
        return f"python -m engine rerun {self.run_id} --db {self.db}"


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def bill(*, db: str, input_path: str, settings: RunSettings, fmt: str | None = None, run_id: str | None = None,
         not_before: float | None = None, log_file: str | None = None, quiet: bool = False) -> RunResult:
    """Load ``input_path`` into a new run (write-ahead), then send every row once."""
    fmt = detect_format(input_path, fmt)
    settings.request_spec()  # surface template and environment errors before touching the ledger
    run_id = run_id or new_run_id()
    with Ledger(db) as ledger, EventLog(log_file) as events:
        _create_run(ledger, run_id, input_path, settings, not_before)
        source = "<stdin>" if input_path == "-" else input_path
        # the workers start (imports, curl handles) while the input loads; they send nothing yet
        pool = start_pool(settings) if not_before is None else None
        try:
            with Progress(0, "loading rows", quiet) as progress:
                total = load_rows(ledger, run_id, read_rows(input_path, fmt, settings.id_field), settings, source,
                                  on_progress=progress.count)
        except BaseException:
            if pool is not None:
                pool.terminate()
            ledger.delete_run(run_id)
            raise
        ledger.set_run_state(run_id, "ready", total)
        events.emit("run_start", run_id=run_id, total=total, url=settings.url, method=settings.method)
        return _send_pass(ledger, run_id, settings, (PENDING,), not_before, events, quiet, pool)


def _create_run(ledger: Ledger, run_id: str, input_path: str, settings: RunSettings, not_before) -> None:
    if ledger.has_run(run_id):
        if ledger.get_run(run_id)["state"] != "loading":
            raise UsageError(f"run {run_id!r} already exists in {ledger.path}; "
                             f"finish it with: python -m engine rerun {run_id} --db {ledger.path}")
        ledger.delete_run(run_id)  # a load that was cut short: nothing of it was sent
    ledger.create_run(run_id, input=input_path, url=settings.url, method=settings.method,
                      options=settings.to_dict(), not_before=not_before)


def rerun(*, db: str, run_id: str, include_rejected: bool = False, include_unknown: bool = False,
          log_file: str | None = None, quiet: bool = False, **overrides) -> RunResult:
    """The later pass: send every row of ``run_id`` that has not succeeded (see RESEND_STATES)."""
    with Ledger(db, create=False) as ledger, EventLog(log_file) as events:
        run = ledger.get_run(run_id)
        if run["state"] == "loading":
            raise UsageError(f"run {run_id!r} never finished loading its input; "
                             f"load it again with: python -m engine bill {run['input']} --run-id {run_id} ...")
        settings = RunSettings.from_dict(run["options"], **overrides)
        states = RESEND_STATES + ((REJECTED,) if include_rejected else ()) + ((UNKNOWN,) if include_unknown else ())
        events.emit("rerun_start", run_id=run_id, states=list(states))
        return _send_pass(ledger, run_id, settings, states, run["not_before"], events, quiet)


def _send_pass(ledger: Ledger, run_id: str, settings: RunSettings, states, not_before, events: EventLog,
               quiet: bool, pool=None) -> RunResult:
    to_send = ledger.count_in(run_id, states)
    interrupted = False
    with StopRequest() as stop:
        if to_send and not_before:
            interrupted = not _wait_until(not_before, stop, quiet)
        if to_send and not interrupted:
            pass_no = ledger.start_pass(run_id)
            events.emit("pass_start", run_id=run_id, pass_no=pass_no, rows=to_send)
            with Progress(to_send, f"pass {pass_no}", quiet) as progress:
                sender = Pass(ledger, run_id, settings, states, progress=progress, events=events, stop=stop,
                              total=to_send)
                tally = sender.run(pool)
                pool = None
            interrupted = sender.interrupted
            ledger.end_pass(run_id, pass_no, "interrupted" if interrupted else "finished")
            events.emit("pass_end", run_id=run_id, pass_no=pass_no, attempts=tally.attempts,
                        succeeded=tally.succeeded, not_succeeded=tally.not_succeeded, interrupted=interrupted)
    if pool is not None:  # started for a pass that had nothing to send, or was stopped while waiting
        pool.terminate()
    summary = summarize(ledger, run_id)
    events.emit("finish", run_id=run_id, **{k: summary[k] for k in ("succeeded", "failed", "rejected", "pending")})
    return RunResult(run_id, ledger.path, summary, interrupted)


def _wait_until(when: float, stop: StopRequest, quiet: bool) -> bool:
    """Count down to ``when``; False if the user stopped the wait (nothing was sent)."""
    with Progress(0, "waiting", quiet) as progress:
        last_shown = None
        while (left := when - time.time()) > 0:
            if stop.count:
                return False
            shown = int(left)
            if shown != last_shown and (progress.tty or shown % 10 == 0 or last_shown is None):
                progress.note(f"nothing is sent before {time.strftime('%H:%M:%S', time.localtime(when))}: "
                              f"{shown} s left")
                last_shown = shown
            time.sleep(min(0.2, left))
    return True
