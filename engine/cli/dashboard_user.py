"""``dashboard-user``: add, remove and list the users who may log in to the dashboard."""

from __future__ import annotations

import sys

import click

from engine.cli.options import engine_errors
from engine.errors import UsageError
from engine.extras import DASHBOARD, require

#: The users file the dashboard reads with ``--users``.
USERS_HELP = "The users file (name:role:argon2-hash lines; made private)."


@click.group("dashboard-user")
def dashboard_user():
    """Manage the dashboard's users: a viewer reads; an operator may also pause, resume and rerun.

    \b
    Example:
        python -m engine dashboard-user add alice --role operator --users users.txt
        python -m engine dashboard --allow-actions --users users.txt
    """


@dashboard_user.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator"]),
    default="viewer",
    show_default=True,
    help="A viewer reads; an operator may also pause, resume and rerun.",
)
@click.option("--users", "users_file", required=True, metavar="FILE", help=USERS_HELP)
@engine_errors
def add(name, role, users_file):
    """Add NAME (or change their role and password): the password (16 characters at least) is
    asked for, or read from stdin when it is not a terminal; never an argument.

    \b
    Example:
        python -m engine dashboard-user add alice --role operator --users users.txt
    """
    require(DASHBOARD)
    from engine.dashboard.users import add_user

    if sys.stdin is None:  # started with it closed (``<&-``)
        raise UsageError("no password given: standard input is closed")
    if sys.stdin.isatty():
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    add_user(users_file, name, role, password)
    click.echo(f"{name} ({role}) can log in with --users {users_file}", err=True)


@dashboard_user.command("remove")
@click.argument("name")
@click.option("--users", "users_file", required=True, metavar="FILE", help=USERS_HELP)
@engine_errors
def remove(name, users_file):
    """Remove NAME: once the dashboard is restarted, their session ends at their next page.

    \b
    Example:
        python -m engine dashboard-user remove alice --users users.txt
    """
    from engine.dashboard.users import remove_user

    remove_user(users_file, name)


@dashboard_user.command("list")
@click.option("--users", "users_file", required=True, metavar="FILE", help=USERS_HELP)
@engine_errors
def list_users(users_file):
    """List the users and their roles (never their hashes).

    \b
    Example:
        python -m engine dashboard-user list --users users.txt
    """
    from engine.dashboard.users import read_users

    for name, (role, _) in sorted(read_users(users_file).hashes.items()):
        click.echo(f"{name}\t{role}")
