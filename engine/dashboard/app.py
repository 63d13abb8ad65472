"""The dashboard's web app (Starlette), built from the route table: pages read the ledger through
the Store interface, so it works on a SQLite file and on PostgreSQL, while ``bill`` or ``rerun``
runs in another process."""

from __future__ import annotations

import functools
import os
import time

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.templating import Jinja2Templates

from engine.dashboard.bounds import Scans, open_bounded
from engine.dashboard.context import Dashboard
from engine.dashboard.figures import Figures
from engine.dashboard.guard import Guard, Refused
from engine.dashboard.headers import SecurityHeaders
from engine.dashboard.login import RequireLogin
from engine.dashboard.nodes import NodeBoard
from engine.dashboard.reruns import Reruns
from engine.dashboard.routes import ROUTES
from engine.errors import LedgerError, UnknownRun
from engine.ledger.selection import InvalidFilter

#: The pages' templates.
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
#: Rows per page of failures.
PAGE = 50


def make_app(db: str, guard: Guard, page_size: int = PAGE, broker: str | None = None) -> Starlette:
    """The dashboard for the ledger ``db``; ``guard`` says whether actions are allowed, and to whom;
    ``broker``: the Redis URL whose roster the nodes page shows."""
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters["clock"] = _clock
    open_ledger = functools.partial(open_bounded, db)
    middleware = [
        Middleware(SecurityHeaders),  # outermost: even a refused Host gets the headers
        Middleware(TrustedHostMiddleware, allowed_hosts=list(guard.allowed_hosts)),
        Middleware(RequireLogin),
    ]
    app = Starlette(
        routes=ROUTES,
        middleware=middleware,
        exception_handlers={LedgerError: _ledger_error, InvalidFilter: _invalid_filter, Refused: _refused},
    )
    app.state.dashboard = Dashboard(
        open_ledger,
        guard,
        Figures(open_ledger),
        Reruns(db),
        templates,
        page_size,
        Scans(),
        NodeBoard(broker) if broker else None,
    )
    return app


def _ledger_error(request: Request, error: Exception) -> PlainTextResponse:
    return PlainTextResponse(str(error), status_code=404 if isinstance(error, UnknownRun) else 503)


def _refused(request: Request, error: Exception) -> PlainTextResponse:
    return PlainTextResponse(str(error), status_code=getattr(error, "status", 403))


def _invalid_filter(request: Request, error: Exception) -> PlainTextResponse:
    return PlainTextResponse(str(error), status_code=400)


def _clock(moment: float | None) -> str:
    """A wall-clock moment as the operator reads it (local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)) if moment else "-"
