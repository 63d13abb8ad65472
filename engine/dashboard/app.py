"""The dashboard's web app (Starlette): pages read the ledger through the Store interface, so it
works on a SQLite file and on PostgreSQL, while ``bill`` or ``rerun`` runs in another process."""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from engine.dashboard.actions import Guard, Reruns
from engine.dashboard.charts import bars
from engine.dashboard.metrics import LATENCY_EDGES, registry
from engine.errors import LedgerError
from engine.ledger import Store, open_store
from engine.ledger.selection import NOT_SUCCEEDED, RowFilter
from engine.output.report import summarize
from engine.states import STATES

HERE = os.path.dirname(os.path.abspath(__file__))
#: Rows per page of failures.
PAGE = 50
#: How far back the requests/s chart looks (s), and its bucket (s).
RATE_WINDOW, RATE_BUCKET = 300.0, 5.0


def make_app(db: str, guard: Guard, page_size: int = PAGE) -> Starlette:
    """The dashboard for the ledger ``db``; ``guard`` says whether actions are allowed, and to whom."""
    templates = Jinja2Templates(directory=os.path.join(HERE, "templates"))
    reruns = Reruns(db)

    def ledger() -> Store:
        return open_store(db, create=False)

    def page(request: Request, name: str, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"actions": guard.enabled, **context})

    def runs(request: Request) -> HTMLResponse:
        with ledger() as store:
            listed = [{**run, "summary": summarize(store, run["run_id"])} for run in reversed(store.list_runs())]
        return page(request, "runs.html", runs=listed)

    def run(request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        with ledger() as store:
            live = _live(store, run_id, reruns)
        return page(request, "run.html", run_id=run_id, live=live, csrf=guard.csrf(run_id), states=STATES)

    def live(request: Request) -> JSONResponse:
        with ledger() as store:
            return JSONResponse(_live(store, request.path_params["run_id"], reruns))

    def charts(request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        with ledger() as store:
            return HTMLResponse(_charts(store, run_id))

    def failures(request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        rows = _filter(request.query_params)
        after = _int(request.query_params.get("after")) or 0
        with ledger() as store:
            store.get_run(run_id)
            found = store.find_rows(run_id, rows, after_rid=after, limit=page_size + 1)
        return page(
            request,
            "failures.html",
            run_id=run_id,
            rows=found[:page_size],
            next_after=found[page_size - 1]["rid"] if len(found) > page_size else None,
            query=dict(request.query_params),
            chosen=rows,
            csrf=guard.csrf(run_id),
            states=STATES,
        )

    def row(request: Request) -> Response:
        run_id, row_id = request.path_params["run_id"], request.path_params["row_id"]
        with ledger() as store:
            found = store.find_rows(run_id, RowFilter(states=(), row_id=row_id), limit=1)
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
            store.get_run(run_id)
            if action == "pause":
                store.set_paused(run_id, True)
            elif action == "resume":
                store.set_paused(run_id, False)
            elif action == "rerun":
                reruns.start(run_id, _filter(form) if form.get("scope") == "filtered" else None)
            else:
                return PlainTextResponse(f"no action {action!r}", status_code=404)
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry(ledger)), media_type=CONTENT_TYPE_LATEST)

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
        exception_handlers={LedgerError: _ledger_error},
    )
    return app


def _ledger_error(request: Request, error: Exception) -> PlainTextResponse:
    return PlainTextResponse(str(error), status_code=404 if "no run" in str(error) else 503)


def _live(store: Store, run_id: str, reruns: Reruns) -> dict:
    """What the run page shows and refreshes: counts, progress, speed, ETA, pause, rerun."""
    summary = summarize(store, run_id)
    done = summary["total"] - summary["pending"]
    recent = store.attempts_per_second(run_id, time.time() - 10.0, 10.0)
    rate = sum(count for _, count in recent) / 10.0
    left = summary["pending"]
    return {
        **summary,
        "done": done,
        "progress": round(done / summary["total"], 4) if summary["total"] else 1.0,
        "recent_rate": rate,
        "eta_s": round(left / rate) if rate and left else None,
        "paused": store.is_paused(run_id),
        "rerun_running": reruns.active(run_id),
    }


def _charts(store: Store, run_id: str) -> str:
    latency = store.latency_histogram(run_id, LATENCY_EDGES)
    labels = [f"<{edge:g}" for edge in LATENCY_EDGES] + [f"≥{LATENCY_EDGES[-1]:g}"]
    statuses = store.status_counts(run_id)
    since = time.time() - RATE_WINDOW
    series = dict(store.attempts_per_second(run_id, since, RATE_BUCKET))
    starts = [since + n * RATE_BUCKET for n in range(int(RATE_WINDOW / RATE_BUCKET))]
    return "".join(
        (
            bars(
                [round(series.get(t, 0) / RATE_BUCKET) for t in starts],
                [f"-{RATE_WINDOW - (t - since):.0f}s" for t in starts],
                "requests/s, last 5 minutes",
            ),
            bars(latency, labels, "latency of each row's last answer (ms)"),
            bars(list(statuses.values()), list(statuses), "answers by HTTP status / curl error"),
        )
    )


def _filter(params) -> RowFilter:
    """The failure filter a query string or a form names (no state: every state but succeeded)."""
    states = tuple(s for s in params.getlist("status") if s in STATES)
    return RowFilter(
        states=states or NOT_SUCCEEDED,
        http_status=_int(params.get("http_status")),
        curl_error=_int(params.get("curl_error")),
        error_contains=_text(params.get("error")) or None,
        row_id=_text(params.get("row_id")) or None,
    )


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _text(value) -> str | None:
    return value if isinstance(value, str) else None
