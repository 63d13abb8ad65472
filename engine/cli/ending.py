"""How a sending command ends on the terminal: the summary, the one line that says what to do next,
the canary's offer to go on, a notice that could not be delivered, and the exit status."""

from __future__ import annotations

import sys

import click

from engine.cli.options import say
from engine.output.report import render
from engine.run.result import RunResult
from engine.tracing import annotate_current

#: The first word of the verdict line, by exit status (cron and CI match on it; README "For cron and CI").
VERDICTS = {0: "ok", 1: "incomplete", 4: "stopped", 130: "interrupted"}


def on_terminal() -> bool:
    """Someone is there to answer: stdin and stderr are both a terminal (neither closed)."""
    return all(stream is not None and stream.isatty() for stream in (sys.stdin, sys.stderr))


def go_on_after_canary(result: RunResult) -> bool:
    """On a terminal, after a canary that ended as planned: ask whether to send the rest now."""
    if not result.stopped or result.gave_up:  # a kill switch tripped by the canary: no offer
        return False
    left = result.summary["pending"]
    if not left or not on_terminal():
        return False
    click.echo(render(result.summary))
    return click.confirm(f"Send the remaining {left:,}?", default=False, err=True)


def report_notice(result: RunResult) -> None:
    if result.notice_error:
        say.warning(f"notice not delivered (the run's exit status is unchanged): {result.notice_error}")


def verdict(summary: dict, exit_code: int) -> str:
    """The summary's last line, one stable ``key=value`` form for scripts: the outcome, the run, the counts."""
    counts = " ".join(
        f"{name}={summary.get(name, 0)}" for name in ("total", "succeeded", "failed", "rejected", "unknown")
    )
    return f"result={VERDICTS.get(exit_code, 'error')} run={summary['run_id']} {counts} exit={exit_code}"


def finish(result: RunResult) -> None:
    annotate_current(**result.summary)
    click.echo(render(result.summary))
    click.echo(verdict(result.summary, result.exit_code))
    report_notice(result)
    if result.already_billed:
        left = result.summary["total"] - result.summary["succeeded"]
        state = result.summary["state"]
        if left:
            say.warning(
                f"this input was already billed with the same request as run {result.run_id} ({state}, "
                f"{left} rows not succeeded); nothing was sent. Finish it with: {result.rerun_command} "
                "(or give a new --run-id to bill everyone again on purpose)"
            )
        else:
            say.warning(
                f"this input was already billed with the same request as run {result.run_id} ({state}); "
                "nothing left to do, nothing was sent (give a new --run-id to bill everyone again on "
                "purpose)"
            )
        sys.exit(result.exit_code)
    if result.stopped and not result.interrupted:
        say.warning(f"stopped on purpose; send the rest with: {result.rerun_command}")
    elif result.gave_up:
        say.warning(f"{result.gave_up}; rerun the rest later with: {result.rerun_command}")
    elif result.interrupted:
        say.warning(f"interrupted; finish the run with: {result.rerun_command}")
    elif not result.complete:
        missing = result.summary["total"] - result.summary["succeeded"]
        say.warning(f"{missing} rows did not succeed; rerun them with: {result.rerun_command}")
    sys.exit(result.exit_code)
