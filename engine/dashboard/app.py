"""The dashboard's web app (Starlette): pages read the ledger through the Store interface, so it
works on a SQLite file and on PostgreSQL, while ``bill`` or ``rerun`` runs in another process."""

from __future__ import annotations

import os
import time
from urllib.parse import urlencode

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from engine.dashboard.actions import Guard, Reruns
from engine.dashboard.charts import bars
from engine.dashboard.figures import LATENCY_EDGES, RATE_BUCKET, RATE_WINDOW, Figures
from engine.dashboard.metrics import registry
from engine.errors import LedgerError, UnknownRun
from engine.ledger import Store, open_store
from engine.ledger.selection import OPT_INS, RISKS, InvalidFilter, RowFilter
from engine.states import STATES, SUCCEEDED

#: A rerun form's fields that are not the filter's.
FORM_FIELDS = ("csrf", "token", "scope")

HERE = os.path.dirname(os.path.abspath(__file__))
#: Rows per page of failures.
PAGE = 50


def make_app(db: str, guard: Guard, page_size: int = PAGE) -> Starlette:
    """The dashboard for the ledger ``db``; ``guard`` says whether actions are allowed, and to whom."""
    templates = Jinja2Templates(directory=os.path.join(HERE, "templates"))
    templates.env.filters["clock"] = _clock
    reruns = Reruns(db)

    def ledger() -> Store:
        return open_store(db, create=False)

    figures = Figures(ledger)

    def page(request: Request, name: str, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"actions": guard.enabled, **context})

    def runs(request: Request) -> HTMLResponse:
        with ledger() as store:
            run_ids = store.run_ids()
        return page(request, "runs.html", runs=[figures.live(run_id) for run_id in reversed(run_ids)])

    def blocked(run_id: str) -> str | None:
        with ledger() as store:
            return reruns.blocked(run_id, store.get_run(run_id)["options"])

    def run(request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        live = _live(figures, run_id, reruns)
        return page(request, "run.html", run_id=run_id, live=live, csrf=guard.csrf(run_id), blocked=blocked(run_id))

    def live(request: Request) -> JSONResponse:
        return JSONResponse(_live(figures, request.path_params["run_id"], reruns))

    def charts(request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        details = figures.details(run_id)
        return page(
            request,
            "charts.html",
            charts=_charts(details) if details else [],
            passes=figures.live(run_id)["passes"],
            now=time.time(),
        )

    def failures(request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        rows = RowFilter.from_query(request.query_params.multi_items(), ignore=("after",))
        after = _after(request.query_params.getlist("after"))
        with ledger() as store:
            store.get_run(run_id)
            found = store.find_rows(run_id, rows, after_rid=after, limit=page_size + 1)
            counts = store.count_rows(run_id, rows) if guard.enabled else {}
        return page(
            request,
            "failures.html",
            run_id=run_id,
            rows=found[:page_size],
            next_after=found[page_size - 1]["rid"] if len(found) > page_size else None,
            query=dict(request.query_params),
            chosen=rows,
            rerun=_rerun_form(rows, counts),
            csrf=guard.csrf(run_id),
            states=STATES,
            blocked=blocked(run_id) if guard.enabled else None,
            urlencode=urlencode,
        )

    def row(request: Request) -> Response:
        run_id, row_id = request.path_params["run_id"], request.path_params["row_id"]
        with ledger() as store:
            found = store.find_rows(run_id, RowFilter(states=STATES, row_ids=(row_id,)), limit=1)
            if not found:
                return PlainTextResponse(f"no row {row_id!r} in run {run_id!r}", status_code=404)
            attempts = store.row_attempts(found[0]["rid"])
        return page(request, "row.html", run_id=run_id, row=found[0], attempts=attempts)

    async def act(request: Request) -> Response:
        run_id, action = request.path_params["run_id"], request.path_params["action"]
        form = await request.form()
        refusal = guard.refusal(
            run_id,
            _text(form.get("token")),
            _text(form.get("csrf")),
            request.headers.get("origin"),
            request.headers.get("host", ""),
        )
        if refusal:
            return PlainTextResponse(refusal, status_code=403)
        with ledger() as store:
            options = store.get_run(run_id)["options"]
            if action == "pause":
                store.set_paused(run_id, True)
            elif action == "resume":
                store.set_paused(run_id, False)
            elif action == "rerun":
                rows = _rerun_rows(form)  # an invalid filter: 400, before anything starts
                reason = reruns.blocked(run_id, options)
                if reason:
                    return PlainTextResponse(reason, status_code=409)
                reruns.start(run_id, rows)
            else:
                return PlainTextResponse(f"no action {action!r}", status_code=404)
        figures.forget(run_id)
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry(ledger, figures)), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/", runs),
            Route("/runs/{run_id}", run),
            Route("/runs/{run_id}/live.json", live),
            Route("/runs/{run_id}/charts", charts),
            Route("/runs/{run_id}/failures", failures),
            Route("/runs/{run_id}/rows/{row_id}", row),
            Route("/runs/{run_id}/{action}", act, methods=["POST"]),
            Route("/metrics", metrics),
            Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
        ],
        exception_handlers={LedgerError: _ledger_error, InvalidFilter: _invalid_filter},
    )
    return app


def _ledger_error(request: Request, error: Exception) -> PlainTextResponse:
    return PlainTextResponse(str(error), status_code=404 if isinstance(error, UnknownRun) else 503)


def _invalid_filter(request: Request, error: Exception) -> PlainTextResponse:
    return PlainTextResponse(str(error), status_code=400)


def _rerun_rows(form) -> RowFilter | None:
    """The rows a rerun form names: exactly its filter ("filtered"), or every row not succeeded ("all")."""
    scope = form.get("scope")
    if scope == "all":
        return None
    if scope != "filtered":
        raise InvalidFilter(f"invalid filter: scope {scope!r} is neither 'filtered' nor 'all'")
    return RowFilter.from_query(form.multi_items(), ignore=FORM_FIELDS)


def _rerun_form(rows: RowFilter, counts: dict[str, int]) -> dict:
    """What the "rerun exactly these" form says: how many rows it sends, and the tick box of each
    state held back without an opt-in (how many rows, what it risks)."""
    sendable = set(rows.sendable().states) - {SUCCEEDED}
    held = [
        {"state": state, "field": OPT_INS[state], "count": counts[state], "risk": RISKS[state]}
        for state in rows.held_back()
        if counts.get(state)
    ]
    return {
        "fields": rows.to_query(opt_ins=False),
        "total": sum(counts.values()),
        "count": sum(n for state, n in counts.items() if state in sendable),
        "held": held,
    }


def _live(figures: Figures, run_id: str, reruns: Reruns) -> dict:
    """What the run page shows and refreshes every second."""
    details = figures.details(run_id) or {}
    return {
        **figures.live(run_id),
        "attempts": details.get("attempts"),
        "latency_ms": details.get("latency_ms", {}),
        "rerun_running": reruns.active(run_id),
        "rerun": reruns.status(run_id),
    }


def _charts(details: dict) -> list[str]:
    labels = [f"<{edge:g}" for edge in LATENCY_EDGES] + [f"≥{LATENCY_EDGES[-1]:g}"]
    since, per_bucket = details["since"], details["per_bucket"]
    starts = [since + n * RATE_BUCKET for n in range(int(RATE_WINDOW / RATE_BUCKET))]
    answers = details["http_status"]
    return [
        bars(
            [round(per_bucket.get(t, 0) / RATE_BUCKET) for t in starts],
            [f"-{RATE_WINDOW - (t - since):.0f}s" for t in starts],
            "requests/s, last 5 minutes",
        ),
        bars(details["latency_histogram"], labels, "latency of each row's last answer (ms)"),
        bars(list(answers.values()), list(answers), "answers by HTTP status / curl error"),
    ]


def _clock(moment: float | None) -> str:
    """A wall-clock moment as the operator reads it (local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)) if moment else "-"


def _after(values: list[str]) -> int:
    """The page's ``after`` (the last row id of the page before): a number, or 400."""
    if not values:
        return 0
    if len(values) > 1 or not values[0].isdigit():
        raise InvalidFilter(f"invalid page: after={values[-1]!r} is not a row number")
    return int(values[0])


def _text(value) -> str | None:
    return value if isinstance(value, str) else None
