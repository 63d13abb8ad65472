"""``reconcile``: ask the API which unknown rows it charged, and settle them."""

from __future__ import annotations

import sys

import click

from engine.cli.filters import row_filter, row_filter_options
from engine.cli.options import db_option, engine_errors
from engine.run.reconcile import ReconcileResult
from engine.run.reconcile import reconcile as reconcile_run
from engine.run.result import rerun_command
from engine.states import UNKNOWN


@click.command()
@click.argument("run_id")
@click.option(
    "--lookup-url",
    required=True,
    metavar="URL",
    help="GET this URL per row: {key} is the row's idempotency key, {field} a field of its payload "
    "(values URL-encoded). 2xx: charged; 404: never charged; anything else: unsettled.",
)
@row_filter_options
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="HOST",
    help="Let the lookup reach this host[:port] too, besides the run's own (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Ask the API and print the counts; change nothing in the ledger.")
@db_option
@engine_errors
def reconcile(run_id, lookup_url, allow_hosts, dry_run, db, **filter_options):
    """Settle RUN_ID's unknown rows by asking the API whether it charged them.

    Each row is looked up with one GET of --lookup-url, with the run's headers, ${VAR}
    secrets, rate and retries. A 2xx marks the row succeeded; a 404 makes it pending (never
    charged), so a plain rerun sends it, and only such rows; any other answer leaves it as it
    was. Every lookup is recorded as an attempt whose error starts with "lookup:". Without
    --status: the unknown rows (also: key_conflict, rejected). The run
    must not be sending: reconcile holds its lease (exit 2, naming the holder, if a pass does).
    Exit 0 when every row was settled, 1 when some stay unsettled, 130 when interrupted.

    \b
    Example:
        export API_TOKEN=sk_test_123
        python -m engine reconcile run-20261123-101500-ab12 --db engine.db \\
            --lookup-url 'https://api.example.com/v1/charges/by-key/{key}' --dry-run
        python -m engine reconcile run-20261123-101500-ab12 --db engine.db \\
            --lookup-url 'https://api.example.com/v1/customers/{id}/charges'
        python -m engine rerun run-20261123-101500-ab12 --db engine.db
    """
    rows = row_filter(filter_options, default_states=(UNKNOWN,))
    result = reconcile_run(
        db=db, run_id=run_id, lookup_url=lookup_url, rows=rows, allow_hosts=allow_hosts, dry_run=dry_run
    )
    _report(result)
    sys.exit(result.exit_code)


def _report(result: ReconcileResult) -> None:
    """The counts, and what to do next."""
    click.echo(
        f"run {result.run_id}: {result.charged} found charged (succeeded), {result.not_charged} not charged"
        f" (pending), {result.still_unknown} still unsettled"
    )
    if result.dry_run:
        click.echo("dry run: nothing was changed in the ledger")
    elif result.not_charged:
        click.echo(f"send the rows not charged with: {rerun_command(result.run_id, result.db)}")
    if result.gave_up:
        click.echo(f"{result.gave_up}; the rows not settled stay as they were", err=True)
    if result.interrupted:
        click.echo("interrupted; the rows not looked up are as they were", err=True)
