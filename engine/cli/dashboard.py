"""``dashboard``: the operators' web pages for a ledger."""

from __future__ import annotations

import ipaddress
import os

import click

from engine.cli.ledger import roster_option
from engine.cli.options import db_option, engine_errors
from engine.extras import DASHBOARD, require


def is_local(host: str) -> bool:
    """Whether listening on ``host`` keeps the dashboard on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (beyond 127.0.0.1: a login is required).",
)
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on.")
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Allow rerun, pause and resume to operators (needs a login: --users or ENGINE_DASHBOARD_TOKEN).",
)
@click.option(
    "--users", "users_file", metavar="FILE", help="The users who may log in (python -m engine dashboard-user add)."
)
@click.option("--login", is_flag=True, help="Reading needs a login on 127.0.0.1 too.")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A Host the pages may be reached by (repeatable) [default: the listen address, localhost, 127.0.0.1].",
)
@click.option(
    "--root-path", default="", metavar="PATH", help="The path a reverse proxy serves the dashboard under, e.g. /engine."
)
@roster_option("The Redis broker whose worker nodes the nodes page shows (default: none)")
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDRESS",
    help="A reverse proxy whose X-Forwarded-* headers are believed (repeatable).",
)
@engine_errors
def dashboard(db, host, port, allow_actions, users_file, login, allowed_hosts, root_path, broker, trusted_proxies):
    """Serve the web dashboard: runs, a run live, its failures, actions, /metrics.

    Read-only unless --allow-actions; then only an operator acts: a user of --users with the
    role operator, or whoever gives the token in ENGINE_DASHBOARD_TOKEN (never on the command
    line). Beyond 127.0.0.1 (or with --login) every page needs a login.

    \b
    Example:
        python -m engine dashboard-user add alice --role operator --users users.txt
        python -m engine dashboard --db engine.db --allow-actions --users users.txt \\
            --host 0.0.0.0 --allowed-host billing.example.com
        # then open http://billing.example.com:8765/
    """
    require(DASHBOARD)
    import uvicorn

    from engine.dashboard.app import make_app
    from engine.dashboard.guard import LOCAL_HOSTS, TOKEN_ENV, Guard
    from engine.dashboard.reruns import rerun_warning
    from engine.dashboard.sessions import SECRET_ENV, Sessions
    from engine.dashboard.users import UsersError, check_secret, read_users

    users = read_users(users_file, os.environ.get(TOKEN_ENV) or None)
    needs_login = login or not is_local(host)
    if (needs_login or allow_actions) and not users.configured:
        why = "--allow-actions" if not needs_login else ("--login" if login else f"--host {host}")
        raise UsersError(f"{why} needs a login: give --users FILE or set {TOKEN_ENV}")
    secret = os.environ.get(SECRET_ENV)
    sessions = Sessions(check_secret(secret, SECRET_ENV).encode()) if secret else Sessions()
    guard = Guard(
        users.token,
        users=users,
        allow_actions=allow_actions,
        login=needs_login,
        allowed_hosts=tuple(dict.fromkeys(allowed_hosts or (host, *LOCAL_HOSTS))),
        sessions=sessions,
    )
    app = make_app(db, guard, broker=broker)
    if allow_actions:
        warning = rerun_warning(db)
        if warning:
            click.echo(warning, err=True)
    click.echo(f"dashboard of {db} on http://{host}:{port}{root_path}/ (Ctrl-C to stop)", err=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        root_path=root_path.rstrip("/"),
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies) or None,
    )
