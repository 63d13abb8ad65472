"""``dashboard``: the operators' web pages for a ledger."""

from __future__ import annotations

import os

import click

from engine.cli.options import db_option, engine_errors
from engine.extras import DASHBOARD, require


@click.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (this machine only).")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on.")
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Allow rerun, pause and resume from the pages (needs ENGINE_DASHBOARD_TOKEN in the environment).",
)
@engine_errors
def dashboard(db, host, port, allow_actions):
    """Serve the web dashboard: runs, a run live, its failures, actions, /metrics.

    Read-only unless --allow-actions; then every action asks for the token in
    ENGINE_DASHBOARD_TOKEN (never on the command line).

    \b
    Example:
        export ENGINE_DASHBOARD_TOKEN=$(openssl rand -hex 16)
        python -m engine dashboard --db engine.db --allow-actions
        # then open http://127.0.0.1:8765/
    """
    require(DASHBOARD)
    import uvicorn

    from engine.dashboard.app import make_app
    from engine.dashboard.guard import TOKEN_ENV, Guard
    from engine.dashboard.reruns import rerun_warning

    token = os.environ.get(TOKEN_ENV) or None
    if allow_actions and not token:
        raise click.UsageError(f"--allow-actions needs the action token in {TOKEN_ENV}")
    app = make_app(db, Guard(token if allow_actions else None))
    if allow_actions:
        warning = rerun_warning(db)
        if warning:
            click.echo(warning, err=True)
    click.echo(f"dashboard of {db} on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
