"""The dashboard's read pages: runs, a run live, its charts, its failures, one row, /metrics.

They read the ledger through the Store interface (a SQLite file or PostgreSQL) and change nothing.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlencode

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from engine.dashboard.charts import bars, line, status_class
from engine.dashboard.context import Dashboard, dashboard_of
from engine.dashboard.figures import LATENCY_EDGES, RATE_BUCKET, RATE_WINDOW
from engine.dashboard.metrics import registry
from engine.ledger.selection import MAX_TEXT, OPT_INS, RISKS, InvalidFilter, RowFilter
from engine.states import FAILED, REJECTED, RESOLVABLE, STATES, SUCCEEDED, UNKNOWN

#: The states a row's page offers to retry (rejected and unknown behind their opt-in).
RETRYABLE = (FAILED, REJECTED, UNKNOWN)
#: A row number (``after``): ASCII digits that fit in a signed 64-bit integer (a database's).
_ROW_NUMBER = re.compile(r"[0-9]{1,18}")


def runs(request: Request) -> HTMLResponse:
    dashboard = dashboard_of(request)
    with dashboard.open_ledger() as store:
        run_ids = store.run_ids()
    return dashboard.page(request, "runs.html", runs=[dashboard.figures.live(run_id) for run_id in reversed(run_ids)])


def run(request: Request) -> HTMLResponse:
    dashboard, run_id = dashboard_of(request), request.path_params["run_id"]
    live = _live(dashboard, run_id)
    with dashboard.open_ledger() as store:
        audit = store.audit(run_id)
    return dashboard.page(
        request,
        "run.html",
        run_id=run_id,
        live=live,
        audit=audit,
        csrf=dashboard.guard.csrf(run_id),
        blocked=dashboard.blocked(run_id),
    )


def live(request: Request) -> JSONResponse:
    return JSONResponse(_live(dashboard_of(request), request.path_params["run_id"]))


def charts(request: Request) -> HTMLResponse:
    dashboard, run_id = dashboard_of(request), request.path_params["run_id"]
    details = dashboard.figures.details(run_id)
    return dashboard.page(
        request,
        "charts.html",
        charts=_charts(details) if details else [],
        passes=dashboard.figures.live(run_id)["passes"],
        now=time.time(),
    )


async def failures(request: Request) -> HTMLResponse:
    dashboard, run_id = dashboard_of(request), request.path_params["run_id"]
    rows = RowFilter.from_query(request.query_params.multi_items(), ignore=("after",))
    after = _after(request.query_params.getlist("after"))
    size, actions = dashboard.page_size, dashboard.guard.enabled

    def read() -> tuple[list[dict], dict[str, int]]:
        with dashboard.open_ledger() as store:
            store.get_run(run_id)
            found = store.find_rows(run_id, rows, after_rid=after, limit=size + 1)
            return found, store.count_rows(run_id, rows) if actions else {}

    found, counts = await dashboard.scans.answer(("failures", run_id, rows, after, actions), read)
    return dashboard.page(
        request,
        "failures.html",
        run_id=run_id,
        rows=found[:size],
        next_after=found[size - 1]["rid"] if len(found) > size else None,
        query=dict(request.query_params),
        chosen=rows,
        rerun=rerun_form(rows, counts),
        csrf=dashboard.guard.csrf(run_id),
        states=STATES,
        blocked=dashboard.blocked(run_id) if actions else None,
        urlencode=urlencode,
    )


def row(request: Request) -> Response:
    dashboard = dashboard_of(request)
    run_id, row_id = request.path_params["run_id"], request.path_params["row_id"]
    rows = RowFilter.from_options(states=STATES, row_ids=(row_id,))  # a hostile id: 400
    with dashboard.open_ledger() as store:
        found = store.find_rows(run_id, rows, limit=1)
        if not found:
            return PlainTextResponse(f"no row {row_id!r} in run {run_id!r}", status_code=404)
        attempts = store.row_attempts(found[0]["rid"])
    state = found[0]["status"]
    retry = RowFilter.from_options(states=(state,), row_ids=(row_id,))
    return dashboard.page(
        request,
        "row.html",
        run_id=run_id,
        row=found[0],
        attempts=attempts,
        retry=rerun_form(retry, {state: 1}) if state in RETRYABLE else None,
        resolvable=state in RESOLVABLE,
        csrf=dashboard.guard.csrf(run_id),
    )


def metrics(request: Request) -> Response:
    dashboard = dashboard_of(request)
    return Response(generate_latest(registry(dashboard.open_ledger, dashboard.figures)), media_type=CONTENT_TYPE_LATEST)


def rerun_form(rows: RowFilter, counts: dict[str, int]) -> dict:
    """What the "rerun exactly these" form says: how many rows it sends, and the tick box of each
    state held back without an opt-in (how many rows, what it risks)."""
    sendable = set(rows.sendable().states) - {SUCCEEDED}
    held = [
        {
            "state": state,
            "field": OPT_INS[state],
            "count": counts[state],
            "risk": RISKS[state],
            "checked": getattr(rows, OPT_INS[state]),
        }
        for state in rows.held_back()
        if counts.get(state)
    ]
    return {
        "fields": rows.to_query(opt_ins=False),
        "total": sum(counts.values()),
        "count": sum(n for state, n in counts.items() if state in sendable),
        "held": held,
    }


def _live(dashboard: Dashboard, run_id: str) -> dict:
    """What the run page shows and refreshes every second."""
    details = dashboard.figures.details(run_id) or {}
    return {
        **dashboard.figures.live(run_id),
        "attempts": details.get("attempts"),
        "latency_ms": details.get("latency_ms", {}),
        "rerun_running": dashboard.reruns.active(run_id),
        "rerun": dashboard.reruns.status(run_id),
    }


def _charts(details: dict) -> list[str]:
    labels = [f"<{edge:g}" for edge in LATENCY_EDGES] + [f"≥{LATENCY_EDGES[-1]:g}"]
    since, per_bucket = details["since"], details["per_bucket"]
    starts = [since + n * RATE_BUCKET for n in range(int(RATE_WINDOW / RATE_BUCKET))]
    answers = details["http_status"]
    return [
        line(
            [round(per_bucket.get(t, 0) / RATE_BUCKET, 1) for t in starts],
            [f"-{RATE_WINDOW - (t - since):.0f}s" for t in starts],
            "requests/s, last 5 minutes",
        ),
        bars(details["latency_histogram"], labels, "latency of each row's last answer (ms)"),
        bars(
            list(answers.values()),
            list(answers),
            "answers by HTTP status / curl error",
            [status_class(outcome) for outcome in answers],
        ),
    ]


def _after(values: list[str]) -> int:
    """The page's ``after`` (the last row id of the page before): a number, or 400."""
    if not values:
        return 0
    if len(values) > 1 or not _ROW_NUMBER.fullmatch(values[0]):
        raise InvalidFilter(f"invalid page: after={values[-1][:MAX_TEXT]!r} is not a row number")
    return int(values[0])
