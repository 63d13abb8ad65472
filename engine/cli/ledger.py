"""``status``, ``report``, ``export``, ``pause``, ``resume``, ``cancel`` and ``purge``: the commands that read
the ledger, flag a run, or delete what it no longer needs."""

from __future__ import annotations

import time

import click

from engine.cli.filters import row_filter, row_filter_options
from engine.cli.options import broker_option, db_option, engine_errors
from engine.ledger import open_store
from engine.output.export import EXPORT_FORMATS, run_captures, write_export
from engine.output.report import REPORT_FORMATS, render, runs_json, runs_table, scans, summarize
from engine.run.result import rerun_command
from engine.states import FAILED

#: What ``status`` prints: a table, or JSON.
STATUS_FORMATS = ("text", "json")
#: How often ``status --watch`` reads the ledger again (s).
WATCH_EVERY = 2.0


def roster_option(help: str):
    """--broker for a command that only reads the worker nodes' roster (``status``, the dashboard)."""
    return lambda command: broker_option(command, help=help + " [env: ENGINE_BROKER].")


@click.command()
@db_option
@click.option("--watch", is_flag=True, help="Show the table again every 2 s until Ctrl-C.")
@roster_option(
    "Also list the worker nodes alive on this Redis broker: host, pid, version, and whether their ledger is this one"
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(STATUS_FORMATS),
    default="text",
    show_default=True,
    help="Output format: a table, or JSON (one object per run; not with --watch or --broker).",
)
@engine_errors
def status(db, watch, broker, fmt):
    """A table of the runs in the ledger, with their counts per state (and the live worker nodes).
    A run an operator paused shows as ``paused``; one cancelled as ``cancelling`` until its pass ends.

    \b
    Example:
        python -m engine status --db engine.db
        python -m engine status --db engine.db --watch
        python -m engine status --db engine.db --format json
        python -m engine status --db postgresql://billing@db.internal/billing --broker redis://queue.internal:6379/0
    """
    if fmt == "json" and (watch or broker):
        raise click.UsageError("--format json lists the runs once: not with --watch or --broker")
    with open_store(db, create=False) as ledger:
        if fmt == "json":
            click.echo(runs_json(ledger.list_runs()))
            return
        while True:
            table = runs_table(ledger.list_runs())
            if broker:
                table += "\n\n" + nodes_table(broker, ledger.ledger_id())
            if not watch:
                click.echo(table)
                return
            click.clear()
            click.echo(f"{time.strftime('%H:%M:%S')}  (Ctrl-C to leave)\n{table}")
            try:
                time.sleep(WATCH_EVERY)
            except KeyboardInterrupt:
                return


def nodes_table(broker: str, ledger_id: str) -> str:
    """The worker nodes that announced themselves on ``broker`` in the last few seconds."""
    from engine.cluster.app import redis_client  # Celery and Redis: only with a broker
    from engine.cluster.roster import Roster

    nodes = Roster(redis_client(broker)).live()
    lines = [f"worker nodes: {len(nodes)}"]
    for name, card in sorted(nodes.items()):
        ledger = "this ledger" if card["ledger"] == ledger_id else f"ANOTHER ledger ({card['ledger']})"
        lines.append(f"  {name}  batch-engine {card['version']}  {ledger}")
    return "\n".join(lines)


@click.command()
@click.argument("run_id")
@db_option
@engine_errors
def pause(run_id, db):
    """Pause RUN_ID: its running pass starts no new request within a second; in-flight ones finish.

    \b
    Example:
        python -m engine pause run-20261123-101500-ab12 --db engine.db
    """
    _flag_paused(run_id, db, True)
    click.echo(f"run {run_id} paused; resume it with: python -m engine resume {run_id} --db {db}")


@click.command()
@click.argument("run_id")
@db_option
@engine_errors
def resume(run_id, db):
    """Resume RUN_ID after ``pause``: its running pass starts requests again within a second.

    \b
    Example:
        python -m engine resume run-20261123-101500-ab12 --db engine.db
    """
    _flag_paused(run_id, db, False)
    click.echo(f"run {run_id} resumed")


@click.command()
@click.argument("run_id")
@db_option
@engine_errors
def cancel(run_id, db):
    """Cancel RUN_ID's running pass for good: within a second it starts no new request, in-flight ones
    finish and are recorded, and the pass ends. The rows not sent stay as they are, for a rerun.

    \b
    Example:
        python -m engine cancel run-20261123-101500-ab12 --db engine.db
    """
    with open_store(db, create=False) as ledger:
        ledger.cancel_run(run_id)
    click.echo(f"run {run_id} cancelled; send the rest later with: {rerun_command(run_id, db)}")


def _flag_paused(run_id: str, db: str, paused: bool) -> None:
    with open_store(db, create=False) as ledger:
        ledger.set_paused(run_id, paused)


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
@row_filter_options
@click.option(
    "--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="csv", show_default=True, help="Output format."
)
@click.option(
    "--output", "-o", type=click.File("w", encoding="utf-8"), default="-", show_default=True, help="File to write."
)
@click.option(
    "--redact",
    multiple=True,
    metavar="FIELD",
    help="Replace this payload field's value by [redacted] (repeatable): a failure list to share.",
)
@db_option
@engine_errors
def export(run_id, fmt, output, redact, db, **filter_options):
    """The rows of RUN_ID that match, with payload, attempts, last status, error, excerpt and --capture values.

    Without --status: the rows that failed. CSV has a header row even when nothing matches;
    jsonl is one JSON object per row. An invalid filter value is refused (exit 2).

    \b
    Example:
        python -m engine export run-20261123-101500-ab12 -o failed.csv
        python -m engine export run-20261123-101500-ab12 --http-status 503 --format jsonl
        python -m engine export run-20261123-101500-ab12 --status failed --error-contains timeout
        python -m engine export run-20261123-101500-ab12 --redact email --redact name -o to-share.csv
    """
    rows = row_filter(filter_options, default_states=(FAILED,))
    with open_store(db, create=False) as ledger:
        run = ledger.get_run(run_id)
        write_export(ledger.iter_rows(run_id, rows), fmt, output, run_captures(run), redact=redact)


#: The units of ``purge --older-than``: hours, days, weeks (in seconds).
AGE_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``90d``, ``12h``, ``2w`` as seconds; :class:`click.BadParameter` otherwise."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in AGE_UNITS or not number.isdigit():
        raise click.BadParameter(f"{text!r}: give a whole number and a unit (h, d or w), e.g. 90d")
    return int(number) * AGE_UNITS[unit]


@click.command()
@click.option(
    "--older-than",
    "age",
    required=True,
    metavar="AGE",
    callback=lambda _ctx, _param, value: parse_age(value),
    help="Purge runs whose last pass ended this long ago: a number and h, d or w (90d).",
)
@click.option("--dry-run", is_flag=True, help="Print what would be purged; delete nothing.")
@click.option(
    "--include-unfinished",
    is_flag=True,
    help="Also purge runs left loading or running, or with rows that may still be sent (never a live one).",
)
@db_option
@engine_errors
def purge(age, dry_run, include_unfinished, db):
    """Delete the rows and attempts (customers' payloads) of runs that ended long ago.

    Each purged run keeps its summary: status and report show the same counts, attempts,
    elapsed time and latency percentiles as before. A run being sent, left unfinished, or
    with rows that may still be sent (pending, failed, unknown...) is kept, and says why.

    \b
    Example:
        python -m engine purge --older-than 90d --dry-run
        python -m engine purge --older-than 90d --db engine.db
    """
    with open_store(db, create=False) as ledger:
        candidates = ledger.purge_candidates(time.time() - age, include_unfinished)
        purged = 0
        for run in candidates:
            what = f"run {run['run_id']} ({run['state']}): {run['rows']} rows, {run['attempts']} attempts"
            if run["kept"]:
                click.echo(f"kept    {what}: {run['kept']}")
            elif dry_run:
                click.echo(f"would purge {what}")
            elif ledger.purge_run(run["run_id"], lambda r=run["run_id"]: scans(ledger, r), include_unfinished):
                purged += 1
                click.echo(f"purged  {what}")
            else:
                click.echo(f"kept    {what}: it changed meanwhile")
        verb = "would purge" if dry_run else "purged"
        click.echo(f"{verb} {sum(not r['kept'] for r in candidates) if dry_run else purged} runs ended before then")
