"""The command line: each command parses its options and calls one library function."""

from __future__ import annotations

import csv
import dataclasses
import functools
import sys

import click

from engine import __version__
from engine.config import RunSettings, default_of, default_workers
from engine.errors import EngineError
from engine.ledger import BUSY_TIMEOUT, EXPORT_COLUMNS, open_store
from engine.mock.config import MockConfig
from engine.output.report import REPORT_FORMATS, render, runs_table, summarize
from engine.request.inputs import FORMATS
from engine.run.runner import EXIT_INTERRUPTED, RunResult
from engine.run.runner import bill as bill_run
from engine.run.runner import rerun as rerun_run
from engine.starttime import start_time
from engine.states import STATES

DEFAULT_DB = "engine.db"


def run_default(name: str):
    return default_of(RunSettings, name)


def mock_knob_options(command):
    """One option per :class:`MockConfig` field, named, typed and explained by the field."""
    for knob in reversed(dataclasses.fields(MockConfig)):
        flag = "--" + knob.name.replace("_", "-")
        shown = {"help": knob.metadata["help"], "show_default": knob.default is not None}
        if isinstance(knob.default, bool):
            option = click.option(f"{flag}/--no-{flag[2:]}", knob.name, default=knob.default, **shown)
        else:
            kind = MockConfig.OPTIONAL_TYPES.get(knob.name, type(knob.default))
            option = click.option(
                flag,
                *knob.metadata["aliases"],
                knob.name,
                type=kind,
                default=knob.default,
                metavar=knob.metadata["metavar"],
                **shown,
            )
        command = option(command)
    return command


class EngineClickError(click.ClickException):
    """An :class:`EngineError` shown as one line, with its exit code (2, or 3 when the ledger cannot record)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def engine_errors(command):
    """Turn the library's typed errors into one clear line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EngineError as err:
            raise EngineClickError(str(err), err.exit_code) from None
        except KeyboardInterrupt:  # before sending started (loading, starting up): nothing was sent
            click.echo("interrupted before anything was sent", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def db_option(command):
    return click.option("--db", default=DEFAULT_DB, show_default=True, metavar="PATH", help="The SQLite ledger file.")(
        command
    )


def pool_options(command):
    """--workers, --concurrency, --chunks: how much is in flight at once."""
    for option in reversed(
        [
            click.option(
                "--workers",
                type=int,
                default=None,
                metavar="N",
                help=f"Worker processes, each with one CurlMulti [default: CPU count, {default_workers()}].",
            ),
            click.option(
                "--concurrency",
                type=int,
                default=None,
                metavar="N",
                help=f"Transfers in flight per worker [default: {run_default('concurrency')}].",
            ),
            click.option(
                "--chunks",
                type=int,
                default=None,
                metavar="N",
                help=f"Rows per chunk handed to a worker [default: {run_default('chunks')}].",
            ),
            click.option(
                "--rate",
                type=float,
                default=None,
                metavar="N",
                help="Requests per second at most, for all workers together [default: no limit].",
            ),
            click.option(
                "--max-attempts",
                type=int,
                default=None,
                metavar="N",
                help=f"Attempts per row in one pass, the first included [default: {run_default('max_attempts')}].",
            ),
            click.option(
                "--timeout",
                type=float,
                default=None,
                metavar="S",
                help=f"Longest time for one attempt, in seconds [default: {run_default('timeout'):g}]. "
                "A row whose attempt may still be in progress (its sender died) is not sent again "
                "before this long after it was sent.",
            ),
            click.option(
                "--pause-after",
                type=int,
                default=None,
                metavar="N",
                help="Pause the whole run (outage) after N distinct rows in a row get a 'down' answer "
                "(connection refused, connect timeout, 502/503/504) following a success; rows that "
                "keep failing on their own never count; 0 never pauses "
                f"[default: {run_default('pause_after')}].",
            ),
            click.option(
                "--max-pause",
                type=float,
                default=None,
                metavar="S",
                help="Longest total pause of one pass; then the pass ends and the rows wait for rerun "
                f"[default: {run_default('max_pause'):g}].",
            ),
            click.option(
                "--stall-timeout",
                type=float,
                default=None,
                metavar="S",
                help="Replace a worker process that makes no progress for this long (stopped, or stuck in C "
                f"code) [default: {run_default('stall_timeout'):g}].",
            ),
            click.option(
                "--busy-timeout",
                type=click.FloatRange(min=0),
                default=BUSY_TIMEOUT,
                show_default=True,
                metavar="S",
                help="How long a ledger write waits for another program's lock before the "
                "run stops with exit status 3.",
            ),
            click.option(
                "--log-file",
                type=click.Path(dir_okay=False),
                default=None,
                help="Append one JSON line per run event and per failed attempt here.",
            ),
            click.option("--quiet", "-q", is_flag=True, help="No progress output; the summary is still printed."),
        ]
    ):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batch-engine")
def cli():
    """Send one HTTP request per input row, fast, retried, exactly once in effect, with a ledger.

    \b
    Example:
        export API_TOKEN=sk_test_123
        python -m engine bill customers.csv \\
            --url 'https://api.example.com/v1/customers/{id}/charges' \\
            --header 'Authorization: Bearer ${API_TOKEN}' --chunks 100
    """


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.option("--url", required=True, help="Request URL; {field} placeholders are filled from the row, URL-encoded.")
@click.option("--method", default=run_default("method"), show_default=True, help="HTTP method.")
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="Request header (repeatable); {field} from the row, ${VAR} from the environment.",
)
@click.option(
    "--secret-header",
    "secret_headers",
    multiple=True,
    metavar="NAME",
    help="Treat this header as a secret too (Authorization, Cookie and X-Api-Key always are): "
    "its value must come from ${VAR}.",
)
@click.option(
    "--body-template",
    type=click.File("r", encoding="utf-8"),
    default=None,
    help="JSON file with {field} placeholders for the body [default: the row as a JSON object].",
)
@click.option("--form", is_flag=True, help="Send the body form-encoded instead of as JSON.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Input format [default: from the file's extension; needed for '-' (stdin)].",
)
@click.option(
    "--id-field", default=run_default("id_field"), show_default=True, help="Column or key holding each row's unique id."
)
@click.option(
    "--field",
    "field_types",
    multiple=True,
    metavar="NAME:TYPE",
    help="Send this field as int, float, bool or str (CSV values are text otherwise): "
    "--field amount:int --field vip:bool. Values that do not parse are refused with their line.",
)
@click.option(
    "--priority-field",
    default=None,
    metavar="FIELD",
    help="Numeric column: higher values are sent first; ties keep input order.",
)
@click.option("--run-id", default=None, help="Name of this run [default: run-<date>-<time>-<random>].")
@click.option(
    "--not-before",
    default=None,
    metavar="TIME",
    help="Send nothing before this time (ISO 8601, or HH:MM today); waits with a countdown.",
)
@click.option("--delay", type=float, default=None, metavar="S", help="Send nothing for this many seconds.")
@click.option(
    "--idempotency-header",
    default=run_default("idempotency_header"),
    show_default=True,
    help="Header carrying each row's stable idempotency key.",
)
@click.option(
    "--idempotency-key-field",
    default=None,
    metavar="FIELD",
    help="Use this row field as the key [default: <run-id>:<row id>].",
)
@click.option(
    "--no-idempotency",
    is_flag=True,
    help="Send no key; a request whose outcome is unknown is then not retried but marked 'unknown'.",
)
@click.option(
    "--backoff-base",
    type=float,
    default=run_default("backoff_base"),
    show_default=True,
    metavar="S",
    help="First retry waits up to this long; doubling each time (full jitter).",
)
@click.option(
    "--backoff-cap",
    type=float,
    default=run_default("backoff_cap"),
    show_default=True,
    metavar="S",
    help="Longest back-off between attempts.",
)
@click.option(
    "--retry-after-cap",
    type=float,
    default=run_default("retry_after_cap"),
    show_default=True,
    metavar="S",
    help="Longest wait honoured from a Retry-After header.",
)
@click.option(
    "--connect-timeout",
    type=float,
    default=run_default("connect_timeout"),
    show_default=True,
    metavar="S",
    help="Longest time to open a connection.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Another destination host requests may go to (the --url host always may).",
)
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates (printed in the summary).")
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA certificates to verify TLS with [default: libcurl's].",
)
@db_option
@pool_options
@engine_errors
def bill(
    input_path,
    url,
    method,
    headers,
    secret_headers,
    body_template,
    form,
    fmt,
    id_field,
    field_types,
    priority_field,
    run_id,
    not_before,
    delay,
    idempotency_header,
    idempotency_key_field,
    no_idempotency,
    backoff_base,
    backoff_cap,
    retry_after_cap,
    connect_timeout,
    allow_hosts,
    insecure,
    ca_bundle,
    db,
    workers,
    concurrency,
    chunks,
    rate,
    max_attempts,
    timeout,
    pause_after,
    max_pause,
    stall_timeout,
    busy_timeout,
    log_file,
    quiet,
):
    """Send one request per row of INPUT (CSV, JSON Lines, or - for stdin) and record each outcome.

    Exit status: 0 when every row succeeded, 1 when some did not (the rerun command is
    printed), 2 on bad usage or bad input (nothing is sent), 3 when the ledger cannot record
    (disk full, locked: nothing more is sent), 130 when interrupted.

    Running the same command again charges nobody twice: the idempotency keys derive from
    the request templates and each row's id, and on the same ledger the earlier run is
    named instead. To bill the same customers again on purpose (next month), give a new
    --run-id: the keys then derive from it.

    \b
    Example:
        python -m engine bill customers.csv --chunks 100 --run-id 2026-12 \\
            --url 'https://api.example.com/v1/customers/{id}/charges' \\
            --header 'Authorization: Bearer ${API_TOKEN}'
    """
    settings = RunSettings.from_dict(
        dict(
            url=url,
            method=method,
            headers=headers,
            secret_headers=secret_headers,
            form=form,
            body_template=body_template.read() if body_template else None,
            allow_hosts=allow_hosts,
            id_field=id_field,
            field_types=field_types,
            priority_field=priority_field,
            idempotency_header=idempotency_header,
            idempotency_key_field=idempotency_key_field,
            idempotency=not no_idempotency,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            connect_timeout=connect_timeout,
            insecure=insecure,
            ca_bundle=ca_bundle,
        ),
        workers=workers,
        concurrency=concurrency,
        chunks=chunks,
        rate=rate,
        max_attempts=max_attempts,
        timeout=timeout,
        pause_after=pause_after,
        max_pause=max_pause,
        stall_timeout=stall_timeout,
    )
    result = bill_run(
        db=db,
        input_path=input_path,
        settings=settings,
        fmt=fmt,
        run_id=run_id,
        not_before=start_time(not_before, delay),
        log_file=log_file,
        quiet=quiet,
        busy_timeout=busy_timeout,
    )
    _finish(result)


@cli.command()
@click.argument("run_id")
@click.option("--include-rejected", is_flag=True, help="Also resend rows the API rejected with a final 4xx.")
@click.option(
    "--include-unknown",
    is_flag=True,
    help="Also resend rows whose outcome is unknown (only after checking they were not applied).",
)
@db_option
@pool_options
@engine_errors
def rerun(
    run_id,
    include_rejected,
    include_unknown,
    db,
    workers,
    concurrency,
    chunks,
    rate,
    max_attempts,
    timeout,
    pause_after,
    max_pause,
    stall_timeout,
    busy_timeout,
    log_file,
    quiet,
):
    """The later pass: send every row of RUN_ID that has not succeeded, with the same keys.

    Sends rows that are pending (never sent, or in flight when a run was stopped or
    killed), retrying, or failed. The request settings are the ones stored with the run;
    secrets are read again from the environment.

    \b
    Example:
        python -m engine rerun run-20261123-101500-ab12 --db engine.db
    """
    result = rerun_run(
        db=db,
        run_id=run_id,
        include_rejected=include_rejected,
        include_unknown=include_unknown,
        log_file=log_file,
        quiet=quiet,
        workers=workers,
        concurrency=concurrency,
        chunks=chunks,
        rate=rate,
        max_attempts=max_attempts,
        timeout=timeout,
        pause_after=pause_after,
        max_pause=max_pause,
        stall_timeout=stall_timeout,
        busy_timeout=busy_timeout,
    )
    _finish(result)


def _finish(result: RunResult) -> None:
    click.echo(render(result.summary))
    if result.already_billed:
        left = result.summary["total"] - result.summary["succeeded"]
        state = result.summary["state"]
        if left:
            click.echo(
                f"this input was already billed with the same request as run {result.run_id} ({state}, "
                f"{left} rows not succeeded); nothing was sent. Finish it with: {result.rerun_command} "
                "(or give a new --run-id to bill everyone again on purpose)",
                err=True,
            )
        else:
            click.echo(
                f"this input was already billed with the same request as run {result.run_id} ({state}); "
                "nothing left to do, nothing was sent (give a new --run-id to bill everyone again on "
                "purpose)",
                err=True,
            )
        sys.exit(result.exit_code)
    if result.gave_up:
        click.echo(f"{result.gave_up}; rerun the rest later with: {result.rerun_command}", err=True)
    elif result.interrupted:
        click.echo(f"interrupted; finish the run with: {result.rerun_command}", err=True)
    elif not result.complete:
        missing = result.summary["total"] - result.summary["succeeded"]
        click.echo(f"{missing} rows did not succeed; rerun them with: {result.rerun_command}", err=True)
    sys.exit(result.exit_code)


@cli.command()
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


@cli.command()
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


@cli.command()
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


@cli.command("mock-api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port; 0 picks a free one.")
@mock_knob_options
def mock_api(host, port, **knobs):
    """Run the bundled fake billing API (asyncio, thousands of connections on one core).

    POST to /v1/customers/<id>/charges (or any path, with "id" or "customer" in the body)
    charges a customer; a repeated Idempotency-Key is replayed, not charged again.
    GET /stats returns counters, including customers charged more than once.

    \b
    Example:
        python -m engine mock-api --port 8080 --latency 1.6 --error-rate 0.02
    """
    from engine.mock.process import READY_PREFIX

    def ready(bound_port):
        click.echo(f"{READY_PREFIX}http://{host}:{bound_port}")
        sys.stdout.flush()

    from engine.mock.api import run as run_mock_api

    run_mock_api(host, port, MockConfig(**knobs), on_ready=ready)


@cli.command()
@click.option("--users", type=int, default=10_000, show_default=True, help="Fake customers to bill.")
@click.option("--workers", type=int, default=None, help="Worker processes [default: CPU count].")
@click.option("--concurrency", type=int, default=500, show_default=True, help="Transfers in flight per worker.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write the customers CSV and the ledger [default: a new temporary directory].",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@engine_errors
def demo(users, workers, concurrency, directory, quiet):
    """Bill fake customers through the bundled mock API (1.6 s per request), rerun failures, summarize.

    Runs offline on 127.0.0.1; about 30 seconds for the default 10,000 customers.

    \b
    Example:
        python -m engine demo --users 10000
    """
    from engine.mock.demo import run_demo

    sys.exit(run_demo(users, workers or default_workers(), concurrency, directory, quiet))
