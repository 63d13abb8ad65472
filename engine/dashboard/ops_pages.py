"""The operators' overview pages: a run's failures grouped by cause, and the worker nodes.

Groups come from one bounded query (:meth:`~engine.ledger.roles.LedgerReader.failure_groups`), run
as a scan (:class:`~engine.dashboard.bounds.Scans`); each links to the failures page of its filter,
whose "rerun exactly these" form says how many rows it sends, holds back unknown and rejected
rows without the opt-in, and asks to confirm. The nodes page reads the broker's roster when the
dashboard was given ``--broker``, and says so when it was not.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse

from engine.dashboard.charts import status_class
from engine.dashboard.context import dashboard_of
from engine.dashboard.groups import RAW_GROUPS, causes


async def failure_causes(request: Request) -> HTMLResponse:
    dashboard, run_id = dashboard_of(request), request.path_params["run_id"]

    def read() -> list[dict]:
        with dashboard.open_ledger() as store:
            store.get_run(run_id)  # an unknown run: 404
            return store.failure_groups(run_id, RAW_GROUPS)

    found = causes(await dashboard.scans.answer(("causes", run_id), read))
    listed = [
        {
            "cause": cause,
            "query": urlencode(cause.rows_filter().to_query()),
            "colour": status_class(str(cause.http_status)) if cause.http_status else "sunknown",
        }
        for cause in found
    ]
    return dashboard.page(request, "causes.html", run_id=run_id, causes=listed)


def nodes(request: Request) -> HTMLResponse:
    dashboard = dashboard_of(request)
    if dashboard.nodes is None:
        return dashboard.page(request, "nodes.html", nodes=None, why="no broker: start the dashboard with --broker URL")
    import redis  # only with a broker

    try:
        found = dashboard.nodes.nodes(dashboard.open_ledger)
    except (redis.RedisError, OSError) as error:
        return dashboard.page(
            request, "nodes.html", nodes=None, why=f"the broker cannot be read: {error}", status_code=503
        )
    return dashboard.page(request, "nodes.html", nodes=found, why=None)
