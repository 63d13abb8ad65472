"""Logging in and out of the dashboard, and the gate that sends a reader without a login there
(when reading needs one).

A login sets the signed session cookie: ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no
other site's page sends it), ``Secure`` when the page came over HTTPS (directly, or said so by a
trusted proxy), and it expires.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.dashboard.context import dashboard_of
from engine.dashboard.guard import Refused
from engine.dashboard.sessions import COOKIE

#: What a reader may reach without a login: the login page and the stylesheet and script.
OPEN_PATHS = ("/login", "/static/")


def login_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    return dashboard.page(request, "login.html", next=_next(request.query_params.get("next")), error=None)


async def login(request: Request) -> Response:
    dashboard, form = dashboard_of(request), await request.form()
    name, password = form.get("name"), form.get("password")
    given = form.get("next")
    target = _next(given if isinstance(given, str) else None)
    if not isinstance(name, str) or not isinstance(password, str):
        return PlainTextResponse("refused: a login needs a name and a password", status_code=400)
    dashboard.guard.check_origin(request.headers.get("origin"), request.headers.get("host", ""))
    try:
        user = dashboard.guard.login_with(request, name, password)
    except Refused as refused:
        answer = dashboard.page(request, "login.html", next=target, error=str(refused))
        answer.status_code = refused.status
        return answer
    redirect = RedirectResponse(_root(request) + target, status_code=303)
    redirect.set_cookie(
        COOKIE,
        dashboard.guard.sessions.cookie(user.name),
        max_age=int(dashboard.guard.sessions.lifetime),
        path=_root(request) or "/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return redirect


async def logout(request: Request) -> Response:
    answer = RedirectResponse(_root(request) + "/login", status_code=303)
    answer.delete_cookie(COOKIE, path=_root(request) or "/")
    return answer


class RequireLogin:
    """Lets a request through if reading needs no login, it asks for an open path, or a user is
    logged in; else a page is sent to the login (303) and anything else is 401."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            guard = scope["app"].state.dashboard.guard
            path = scope["path"][len(_root(request)) :] if scope["path"].startswith(_root(request)) else scope["path"]
            if "\0" in path:  # PostgreSQL refuses a NUL byte in a run or row id: say so, never a 500
                await PlainTextResponse("invalid path: it holds a NUL byte", status_code=400)(scope, receive, send)
                return
            if guard.login and not path.startswith(OPEN_PATHS) and guard.user(request) is None:
                answer: Response = PlainTextResponse("log in first: /login", status_code=401)
                if request.method == "GET" and not path.endswith((".json", "/metrics", "/charts")):
                    answer = RedirectResponse(f"{_root(request)}/login?next={quote(path)}", status_code=303)
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _next(target: str | None) -> str:
    """Where to go after the login: a path of this dashboard only (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
