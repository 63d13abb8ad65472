"""What every page and action of one dashboard shares, kept on the app (``app.state.dashboard``)
so that the route table can name plain handler functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from engine.dashboard.bounds import Scans
from engine.dashboard.figures import Figures
from engine.dashboard.guard import Guard
from engine.dashboard.nodes import NodeBoard
from engine.dashboard.reruns import Reruns
from engine.dashboard.users import OPERATOR
from engine.ledger import Store


@dataclass(frozen=True)
class Dashboard:
    """One dashboard: its ledger, the figures its pages share, who may act, the reruns it started."""

    open_ledger: Callable[[], Store]
    guard: Guard
    figures: Figures
    reruns: Reruns
    templates: Jinja2Templates
    #: Rows per page of failures.
    page_size: int
    #: The heavy reads' threads and their short-lived answers.
    scans: Scans
    #: The worker nodes' roster on the broker, if the dashboard was given one.
    nodes: NodeBoard | None = None

    def page(self, request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        """The template ``name`` filled with ``context``, whether actions are on and who may take
        them, who is logged in, and the path the dashboard is served under."""
        user = self.guard.user(request)
        shared = {
            "actions": self.guard.enabled and (user is None or user.role == OPERATOR),
            "user": user,
            "root": request.scope.get("root_path", "").rstrip("/"),
        }
        return self.templates.TemplateResponse(request, name, {**shared, **context}, status_code=status_code)

    def blocked(self, run_id: str) -> str | None:
        """Why a rerun of ``run_id`` cannot start from here, or None."""
        with self.open_ledger() as store:
            return self.reruns.blocked(run_id, store.get_run(run_id)["options"])


def dashboard_of(request: Request) -> Dashboard:
    """The dashboard a request reached."""
    return request.app.state.dashboard
