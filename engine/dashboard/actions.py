"""What the dashboard may change, and who may ask: reruns in the background, pause and resume.

Actions exist only when the dashboard was started with ``--allow-actions`` and
``ENGINE_DASHBOARD_TOKEN`` is set. Each is a POST carrying that token and the page's CSRF
token (an HMAC of a per-process secret: a page from another site cannot know it), from a
page of this origin; a GET never changes anything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import subprocess
import sys
from dataclasses import dataclass, field

from engine.ledger.selection import RowFilter

#: The environment variable holding the operators' action token.
TOKEN_ENV = "ENGINE_DASHBOARD_TOKEN"


@dataclass(frozen=True)
class Guard:
    """The action token (None: actions are off) and the CSRF secret of this process."""

    token: str | None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def csrf(self, run_id: str) -> str:
        """The CSRF token a page of ``run_id`` embeds in its forms."""
        return hmac.new(self.secret, run_id.encode(), hashlib.sha256).hexdigest()

    def refusal(self, run_id: str, token: str | None, csrf: str | None, origin: str | None, host: str) -> str | None:
        """Why a POST is refused, or None if it may act."""
        if not self.enabled:
            return "actions are off: start the dashboard with --allow-actions and ENGINE_DASHBOARD_TOKEN set"
        if origin and origin.split("://", 1)[-1] != host:
            return "refused: the request came from another site"
        if not csrf or not hmac.compare_digest(csrf, self.csrf(run_id)):
            return "refused: the form is stale or forged (CSRF); reload the page"
        if not token or not hmac.compare_digest(token.encode(), (self.token or "").encode()):
            return "refused: wrong action token"
        return None


class Reruns:
    """Reruns started from the dashboard: ``python -m engine rerun`` in the background, one per run."""

    def __init__(self, db: str):
        self.db = db
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, run_id: str, rows: RowFilter | None) -> str:
        """Start a rerun of ``run_id`` (of exactly ``rows`` if given); what to tell the operator."""
        if self.active(run_id):
            return f"a rerun of {run_id} is already running"
        command = [sys.executable, "-m", "engine", "rerun", run_id, "--db", self.db, "--quiet"]
        if rows is not None:
            command += [arg for state in rows.states for arg in ("--status", state)]
            for flag, value in (
                ("--http-status", rows.http_status),
                ("--curl-error", rows.curl_error),
                ("--error-contains", rows.error_contains),
            ):
                if value is not None:
                    command += [flag, str(value)]
        self.running[run_id] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        return f"rerun of {run_id} started"

    def active(self, run_id: str) -> bool:
        process = self.running.get(run_id)
        return process is not None and process.poll() is None
