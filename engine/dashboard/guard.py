"""Who may act from the dashboard: the operators' action token, and a CSRF token per run.

Actions exist only when the dashboard was started with ``--allow-actions`` and
``ENGINE_DASHBOARD_TOKEN`` is set. Each is a POST carrying that token and the page's CSRF
token (an HMAC of a per-process secret: a page from another site cannot know it), from a
page of this origin; a GET never changes anything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

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
