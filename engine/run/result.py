"""How a run's command ended, as the CLI, the dashboard and scripts read it: :class:`RunResult`."""

from __future__ import annotations

from dataclasses import dataclass

#: Exit code of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130
#: Exit code of a run stopped on purpose, nothing wrong with the engine: a canary sent, the kill switch.
EXIT_STOPPED = 4


def rerun_command(run_id: str, db: str) -> str:
    """The one place the rerun hint is written."""
    return f"python -m engine rerun {run_id} --db {db}"


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
    #: Why the pass stopped on purpose (a canary, the kill switch): exit 4.
    stopped: str | None = None
    #: A notice (--notify-url/--notify-command) that could not be delivered: one line to tell.
    notice_error: str | None = None

    @property
    def complete(self) -> bool:
        return self.summary["succeeded"] + self.summary.get("resolved", 0) == self.summary["total"]  # resolved: by hand

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.stopped:
            return EXIT_STOPPED
        return 0 if self.complete else 1

    @property
    def rerun_command(self) -> str:
        return rerun_command(self.run_id, self.db)
