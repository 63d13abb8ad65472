"""What the dashboard may change: pause, resume, cancel, rerun (exactly the filtered rows (a group,
one row), or every row not succeeded), and mark a row resolved, each a POST the
:class:`~engine.dashboard.guard.Guard` must allow first.

A refused action is 403; an unknown run 404; an invalid rerun filter 400, before anything
starts; a rerun that cannot start here (a missing secret, one already running) 409. A done
action goes back to the run's page, read afresh.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from engine.dashboard.context import Dashboard, dashboard_of
from engine.dashboard.reruns import described
from engine.ledger import Store
from engine.ledger.selection import InvalidFilter, RowFilter
from engine.states import RESOLVABLE

#: A rerun form's fields that are not the filter's.
FORM_FIELDS = ("csrf", "token", "scope")

#: An action: what it does to a run (the ledger open); the rows it names, in words, and a response
#: only when it refuses.
Action = Callable[[Dashboard, Store, str, FormData], tuple[str, Response | None]]
#: What pause and resume name.
WHOLE_RUN = "the whole run"


def guarded(action: Action) -> Callable[[Request], Awaitable[Response]]:
    """The POST handler of ``action``: refused unless the guard allows it, recorded in the ledger's
    audit log (who, what, which rows, how it ended), then back to the run's page."""

    @functools.wraps(action)
    async def handler(request: Request) -> Response:
        dashboard, run_id = dashboard_of(request), request.path_params["run_id"]
        form = await request.form()
        who = dashboard.guard.actor(request, run_id, _text(form.get("token")), _text(form.get("csrf")))
        with dashboard.open_ledger() as store:
            store.get_run(run_id)  # an unknown run: 404
            try:
                rows, refused = action(dashboard, store, run_id, form)
            except InvalidFilter as invalid:
                store.record_action(run_id, who, action.__name__, "-", f"refused: {invalid}")
                raise
            outcome = "done" if refused is None else f"refused: {bytes(refused.body).decode()}"
            store.record_action(run_id, who, action.__name__, rows, outcome)
        if refused is not None:
            return refused
        dashboard.figures.forget(run_id)
        dashboard.scans.forget()
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}/runs/{quote(run_id)}", status_code=303)

    return handler


@guarded
def pause(dashboard: Dashboard, store: Store, run_id: str, form: FormData) -> tuple[str, None]:
    store.set_paused(run_id, True)
    return WHOLE_RUN, None


@guarded
def resume(dashboard: Dashboard, store: Store, run_id: str, form: FormData) -> tuple[str, None]:
    store.set_paused(run_id, False)
    return WHOLE_RUN, None


@guarded
def cancel(dashboard: Dashboard, store: Store, run_id: str, form: FormData) -> tuple[str, None]:
    store.cancel_run(run_id)
    return WHOLE_RUN, None


@guarded
def resolve(dashboard: Dashboard, store: Store, run_id: str, form: FormData) -> tuple[str, Response | None]:
    """One row, settled by hand: it leaves the failures and is never sent again."""
    row_id = _text(form.get("row_id"))
    if not row_id:
        raise InvalidFilter("invalid filter: resolve names no row_id")
    rows = RowFilter.from_options(states=RESOLVABLE, row_ids=(row_id,))  # a hostile id: 400
    named = f"row {row_id}"
    if not store.mark_resolved(run_id, rows.row_ids):
        states = "/".join(RESOLVABLE)
        return named, PlainTextResponse(f"row {row_id!r} of {run_id} is not {states}", status_code=409)
    return named, None


@guarded
def rerun(dashboard: Dashboard, store: Store, run_id: str, form: FormData) -> tuple[str, Response | None]:
    rows = _rerun_rows(form)  # an invalid filter: 400, before anything starts
    reason = dashboard.reruns.blocked(run_id, store.get_run(run_id)["options"])
    if reason:
        return described(rows), PlainTextResponse(reason, status_code=409)
    dashboard.reruns.start(run_id, rows)
    return described(rows), None


def _rerun_rows(form: FormData) -> RowFilter | None:
    """The rows a rerun form names: exactly its filter ("filtered"), or every row not succeeded ("all")."""
    scope = form.get("scope")
    if scope == "all":
        return None
    if scope != "filtered":
        raise InvalidFilter(f"invalid filter: scope {scope!r} is neither 'filtered' nor 'all'")
    fields = [(name, value) for name, value in form.multi_items() if isinstance(value, str)]  # no file is a filter
    return RowFilter.from_query(fields, ignore=FORM_FIELDS)


def _text(value) -> str | None:
    return value if isinstance(value, str) else None
