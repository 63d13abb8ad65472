"""``status``, ``report`` and ``export``: the commands that read the ledger."""

from __future__ import annotations

import csv

import click

from engine.cli.options import db_option, engine_errors
from engine.ledger import EXPORT_COLUMNS, open_store
from engine.output.report import REPORT_FORMATS, render, runs_table, summarize
from engine.states import STATES


@click.command()
@db_option
@engine_errors
def status(db):
    """A table of the runs in the ledger, with their counts per state.

    \b
    Example:
        python -m engine status --db engine.db
    """
    with open_store(db, create=False) as ledger:
        click.echo(runs_table(ledger.list_runs()))


@click.command()
@click.argument("run_id")
@click.option(
    "--format", "fmt", type=click.Choice(REPORT_FORMATS), default="text", show_default=True, help="Output format."
)
@db_option
@engine_errors
def report(run_id, fmt, db):
    """The summary of RUN_ID: counts, speed, latency percentiles, HTTP statuses.

    \b
    Example:
        python -m engine report run-20261123-101500-ab12 --format json
    """
    with open_store(db, create=False) as ledger:
        click.echo(render(summarize(ledger, run_id), fmt))


@click.command()
@click.argument("run_id")
@click.option(
    "--status",
    "states",
    type=click.Choice(STATES),
    multiple=True,
    default=("failed",),
    show_default=True,
    help="Export rows in this state (repeatable).",
)
@click.option(
    "--output", "-o", type=click.File("w", encoding="utf-8"), default="-", show_default=True, help="CSV file to write."
)
@db_option
@engine_errors
def export(run_id, states, output, db):
    """The rows of RUN_ID in a state, as CSV, for a person to look at.

    \b
    Example:
        python -m engine export run-20261123-101500-ab12 --status failed -o failed.csv
    """
    with open_store(db, create=False) as ledger:
        ledger.get_run(run_id)
        writer = csv.DictWriter(output, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()  # even when no row matches: a file a program can read
        writer.writerows(ledger.iter_rows(run_id, states))
