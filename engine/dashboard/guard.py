"""Who may read and act from the dashboard: a login (a user of the users file, or the single
operators' token), the Host and Origin it is reached by, and a CSRF token per run.

Actions exist only when the dashboard was started with ``--allow-actions``. Each is a POST from a
page of an allowed host, carrying the page's CSRF token (an HMAC of a per-process secret: a page
from another site cannot know it), by a logged-in ``operator`` or with the token typed in the
form; a GET never changes anything. Reading needs a login when ``login`` is on (always when the
dashboard listens beyond this machine).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request

from engine.dashboard.sessions import COOKIE, Sessions, Throttle
from engine.dashboard.users import OPERATOR, User, Users
from engine.errors import EngineError

#: The environment variable holding the operators' token.
TOKEN_ENV = "ENGINE_DASHBOARD_TOKEN"
#: The hosts a request may name when no ``--allowed-host`` is given (plus the listen address).
LOCAL_HOSTS = ("localhost", "127.0.0.1")


class Refused(EngineError):
    """An action or a login this guard refuses: ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Guard:
    """The operators' ``token`` (with no ``users``: the only login), the ``users`` who may log in,
    whether actions are on (``allow_actions``; None: when there is a token), whether reading needs
    a login, the hosts pages may be reached by, and this process's secrets."""

    token: str | None
    users: Users | None = None
    allow_actions: bool | None = None
    login: bool = False
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    sessions: Sessions = field(default_factory=Sessions)
    throttle: Throttle = field(default_factory=Throttle)

    @property
    def accounts(self) -> Users:
        return self.users if self.users is not None else Users({}, self.token)

    @property
    def enabled(self) -> bool:
        """Whether actions are on."""
        return self.allow_actions if self.allow_actions is not None else bool(self.token)

    def user(self, request: Request) -> User | None:
        """Who is logged in on ``request`` (their role as it is now), or None. A scraper (Prometheus)
        logs in with ``Authorization: Bearer`` and the token instead of a cookie, throttled as a login."""
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and bearer:
            try:
                return self.login_with(request, "", bearer.strip())
            except Refused:
                return None
        name = self.sessions.user(request.cookies.get(COOKIE))
        role = self.accounts.role_of(name) if name else None
        return User(name, role) if name and role else None

    def csrf(self, run_id: str) -> str:
        """The CSRF token a page of ``run_id`` embeds in its forms."""
        return hmac.new(self.secret, run_id.encode(), hashlib.sha256).hexdigest()

    def check_origin(self, origin: str | None, host: str) -> None:
        """Refuse a POST a page of another site sent (a default reverse proxy rewrites Host, so an
        allowed host is as good as the Host header)."""
        if not origin:
            return
        named = urlsplit(origin)
        if origin.split("://", 1)[-1] != host and named.hostname not in self.allowed_hosts:
            raise Refused("refused: the request came from another site")

    def actor(self, request: Request, run_id: str, token: str | None, csrf: str | None) -> str:
        """The name of who may act on ``run_id`` by this POST; :class:`Refused` says why not."""
        if not self.enabled:
            raise Refused("actions are off: start the dashboard with --allow-actions and a login")
        self.check_origin(request.headers.get("origin"), request.headers.get("host", ""))
        if not csrf or not hmac.compare_digest(csrf.encode(), self.csrf(run_id).encode()):
            raise Refused("refused: the form is stale or forged (CSRF); reload the page")
        user = self.user(request)
        if user is not None:
            if user.role != OPERATOR:
                raise Refused(f"refused: {user.name} is a {user.role}; only an operator may act")
            return user.name
        try:
            return self.login_with(request, "", token or "").name
        except Refused as refused:
            if refused.status == 401:
                raise Refused("refused: wrong action token (or log in as an operator)") from None
            raise

    def login_with(self, request: Request, name: str, password: str) -> User:
        """The user ``name`` with ``password`` (or the token); :class:`Refused` when wrong (401), or
        when this address or name made too many wrong tries lately (429)."""
        keys = (f"address:{request.client.host if request.client else '?'}", f"user:{name}")
        if self.throttle.blocked(*keys):
            raise Refused("refused: too many wrong passwords; wait a minute", 429)
        user = self.accounts.verify(name, password)
        if user is None:
            self.throttle.failed(*keys)
            raise Refused("refused: wrong user name or password (or action token)", 401)
        return user
