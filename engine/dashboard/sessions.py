"""Login sessions: a signed cookie naming the user and when it expires, and the throttle on wrong
passwords.

The cookie is ``name.expiry.signature`` (HMAC-SHA256 of a secret from ``ENGINE_DASHBOARD_SECRET``,
or made at start: then a restart logs everyone out). Nothing is stored server-side; the user's
role is looked up on each request in the users read at start, so a user removed (and the dashboard
restarted) is out at their next page, whatever cookie they hold.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

#: The session cookie's name.
COOKIE = "engine_session"
#: How long a login lasts.
SESSION_SECONDS = 8 * 3600
#: The environment variable that may hold the cookies' signing secret (shared by restarts).
SECRET_ENV = "ENGINE_DASHBOARD_SECRET"
#: Wrong passwords allowed per client address, and per user name, in :data:`FAILURE_WINDOW`.
MAX_FAILURES = 5
#: The window (seconds) over which wrong passwords are counted.
FAILURE_WINDOW = 60.0


@dataclass(frozen=True)
class Sessions:
    """Signs and reads session cookies with ``secret``."""

    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    lifetime: float = SESSION_SECONDS

    def cookie(self, name: str, now: float | None = None) -> str:
        """The cookie value of a session of ``name``, valid for :attr:`lifetime`."""
        body = f"{name}.{int((now or time.time()) + self.lifetime)}"
        return f"{body}.{self._sign(body)}"

    def user(self, value: str | None, now: float | None = None) -> str | None:
        """The user a cookie value names, if its signature is right and it has not expired."""
        if not value or value.count(".") < 2:
            return None
        body, signature = value.rsplit(".", 1)
        name, expiry = body.rsplit(".", 1)
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()) or not expiry.isascii():
            return None
        if not expiry.isdigit() or int(expiry) < (now or time.time()):
            return None
        return name

    def _sign(self, body: str) -> str:
        return hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()


class Throttle:
    """Wrong passwords per key (a client address, a user name): at most :data:`MAX_FAILURES` in
    :data:`FAILURE_WINDOW` seconds, then every login of that key is refused (429) until one ages out."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW):
        self.limit, self.window = limit, window
        self.failures: dict[str, deque[float]] = {}

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        return any(self._recent(key, now) >= self.limit for key in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._recent(key, now)
            self.failures.setdefault(key, deque()).append(now)

    def _recent(self, key: str, now: float) -> int:
        """How many failures of ``key`` are in the window (older ones forgotten, and quiet keys)."""
        times = self.failures.get(key)
        while times and times[0] < now - self.window:
            times.popleft()
        if times is not None and not times:
            del self.failures[key]
        return len(times or ())
