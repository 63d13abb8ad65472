"""Reruns started from the dashboard: ``python -m engine rerun`` in the background, in the
dashboard's environment (its ``${VAR}`` secrets), with the last lines it printed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.errors import LedgerError
from engine.ledger import open_store
from engine.ledger.selection import RowFilter
from engine.request.spec import ENV_REF

#: Lines of a rerun's output the pages show.
OUTPUT_LINES = 20


def unset_variables(options: dict, environ: Mapping[str, str]) -> list[str]:
    """The ``${VAR}`` names a run's URL and headers need that ``environ`` lacks."""
    texts = [options.get("url") or "", *(options.get("headers") or ())]
    return sorted({name for text in texts for name in ENV_REF.findall(text) if name not in environ})


def described(rows: RowFilter | None) -> str:
    """The rows a rerun sends, in words (None: every row not yet succeeded)."""
    return "every row not yet succeeded" if rows is None else rows.sendable().describe()


@dataclass
class Rerun:
    """One ``python -m engine rerun`` started here: its process and the last lines it printed."""

    process: subprocess.Popen
    rows: str
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))

    def read(self) -> None:
        """Keep the last lines of its stdout and stderr (in a thread, until it exits)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))

    def status(self) -> dict:
        code = self.process.poll()
        return {"running": code is None, "exit_code": code, "rows": self.rows, "output": list(self.output)}


class Reruns:
    """Reruns started from the dashboard: ``python -m engine rerun`` in the background, one per run,
    in the dashboard's environment (its ``${VAR}`` secrets)."""

    def __init__(self, db: str, environ: Mapping[str, str] = os.environ):
        self.db = db
        self.environ = environ
        self.started: dict[str, Rerun] = {}

    def blocked(self, run_id: str, options: dict) -> str | None:
        """Why a rerun of ``run_id`` (stored settings ``options``) cannot start here, or None."""
        missing = unset_variables(options, self.environ)
        if missing:
            names = ", ".join(f"${{{name}}}" for name in missing)
            return f"rerun disabled: the dashboard's environment lacks {names}, which the requests of {run_id} need"
        if self.active(run_id):
            return f"a rerun of {run_id} is already running"
        return None

    def start(self, run_id: str, rows: RowFilter | None) -> None:
        """Start a rerun of ``run_id``: of exactly ``rows`` if given (their opt-ins included)."""
        command = [sys.executable, "-m", "engine", "rerun", run_id, "--db", self.db, "--quiet"]
        if rows is not None:
            command += rows.to_argv()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=dict(self.environ),
            start_new_session=True,
        )
        rerun = Rerun(process, described(rows))
        self.started[run_id] = rerun
        threading.Thread(target=rerun.read, daemon=True).start()

    def active(self, run_id: str) -> bool:
        rerun = self.started.get(run_id)
        return rerun is not None and rerun.process.poll() is None

    def status(self, run_id: str) -> dict | None:
        """The last rerun started here: running or its exit code, and its last lines of output."""
        rerun = self.started.get(run_id)
        return rerun.status() if rerun else None


def rerun_warning(db: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """One line naming the ``${VAR}`` the runs of ``db`` need and ``environ`` lacks, or None (also
    when there is no ledger yet)."""
    needs: dict[str, list[str]] = {}
    try:
        with open_store(db, create=False) as store:
            for run_id in store.run_ids():
                for name in unset_variables(store.get_run(run_id)["options"], environ):
                    needs.setdefault(name, []).append(run_id)
    except LedgerError:
        return None
    if not needs:
        return None
    missing = "; ".join(f"${{{name}}} (runs {', '.join(runs)})" for name, runs in sorted(needs.items()))
    return f"warning: reruns from the dashboard are disabled where this environment lacks {missing}"
