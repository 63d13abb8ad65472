"""Every URL of the dashboard in one table (as Flower's ``urls.py``): the read pages, then the
POST actions, then the static files."""

from __future__ import annotations

import os

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from engine.dashboard import actions, login, ops_pages, pages

#: The stylesheet and the script the pages load.
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

ROUTES: list[BaseRoute] = [
    Route("/", pages.runs),
    Route("/runs/{run_id}", pages.run),
    Route("/runs/{run_id}/live.json", pages.live),
    Route("/runs/{run_id}/charts", pages.charts),
    Route("/runs/{run_id}/failures", pages.failures),
    Route("/runs/{run_id}/causes", ops_pages.failure_causes),
    Route("/nodes", ops_pages.nodes),
    Route("/runs/{run_id}/rows/{row_id}", pages.row),
    Route("/metrics", pages.metrics),
    Route("/login", login.login_page),
    Route("/login", login.login, methods=["POST"]),
    Route("/logout", login.logout, methods=["POST"]),
    Route("/runs/{run_id}/pause", actions.pause, methods=["POST"]),
    Route("/runs/{run_id}/resume", actions.resume, methods=["POST"]),
    Route("/runs/{run_id}/rerun", actions.rerun, methods=["POST"]),
    Route("/runs/{run_id}/cancel", actions.cancel, methods=["POST"]),
    Route("/runs/{run_id}/resolve", actions.resolve, methods=["POST"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
