"""What every command shares: option groups, defaults, and one line (no traceback) per error."""

from __future__ import annotations

import csv
import functools
import logging
import re
import sys
from urllib.parse import urlsplit

import click

from engine.config import RunSettings, default_of, default_workers
from engine.errors import EngineError, UsageError
from engine.extras import CLUSTER, MissingExtra, require
from engine.ledger import BUSY_TIMEOUT
from engine.ledger.selection import InvalidFilter, RowFilter
from engine.output.logs import logging_ready, setup_logging
from engine.run.killswitch import DEFAULT_MIN_SAMPLE
from engine.run.runner import EXIT_INTERRUPTED
from engine.states import STATES

DEFAULT_DB = "engine.db"
#: The operator's lines on stderr (errors, what to do next): through logging, so --log-format applies.
say = logging.getLogger("engine.cli")
#: A new run id: shell-safe in a printed command and safe in a URL (old ledgers' ids are still read).
RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")
#: A certificate or key file: it must exist, and is stored with the run as an absolute path, so a
#: ``rerun`` from another directory finds it.
PEM_FILE = click.Path(exists=True, dir_okay=False, resolve_path=True)


def run_default(name: str):
    return default_of(RunSettings, name)


def seconds_option(flag: str, help: str):
    """A ``--flag S`` option for the :class:`RunSettings` field of the same name, with its default."""
    return click.option(
        flag, type=float, default=run_default(flag[2:].replace("-", "_")), show_default=True, metavar="S", help=help
    )


class EngineClickError(click.ClickException):
    """An :class:`EngineError` shown as one line, with its exit code (2, or 3 when the ledger cannot record)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file=None):
        if not logging_ready():  # refused before the group set logging up (an eager --config)
            setup_logging()
        say.error(f"error: {self.format_message()}")


def engine_errors(command):
    """Turn the library's typed errors into one clear line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EngineError as err:
            raise EngineClickError(str(err), err.exit_code) from None
        except KeyboardInterrupt:  # before sending started (loading, starting up): nothing was sent
            say.warning("interrupted before anything was sent")
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def refuse_workers_with_broker(broker: str | None, workers: int | None) -> None:
    """--workers sizes the local pool only: with --broker it would be silently ignored, so it is refused."""
    if broker and workers is not None:
        raise UsageError(
            "--workers applies to the local pool only; with --broker each node sends with its own"
            " --chunks-in-flight processes (python -m engine worker --chunks-in-flight N)"
        )


def safe_run_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A new ``--run-id``: letters, digits and ``. _ : -`` only, at most 100 (else exit 2)."""
    if value is not None and not RUN_ID.fullmatch(value):
        raise click.BadParameter("a run id is 1 to 100 of the characters A-Z a-z 0-9 . _ : -")
    return value


def db_option(command):
    return click.option(
        "--db",
        default=DEFAULT_DB,
        show_default=True,
        metavar="PATH|URL",
        help="The ledger: a SQLite file, or postgresql://user@host/dbname (password from PGPASSWORD).",
    )(command)


def _broker_without_password(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A broker URL with no password typed on the command line, and the worker nodes' extra installed."""
    source = ctx.get_parameter_source(param.name or "broker")
    if value and source == click.core.ParameterSource.COMMANDLINE and urlsplit(value).password:
        raise click.BadParameter("a password typed here would be in the process list; set ENGINE_BROKER instead")
    if value:
        try:
            require(CLUSTER)
        except MissingExtra as err:
            raise EngineClickError(str(err), err.exit_code) from None
    return value


def broker_option(
    command,
    help: str = "Send through worker nodes (python -m engine worker) over this Redis broker, e.g. "
    "redis://queue.internal:6379/0 [env: ENGINE_BROKER; default: the local process pool].",
):
    """--broker: the Celery broker worker nodes take chunks from (a password only from the environment)."""
    return click.option(
        "--broker", envvar="ENGINE_BROKER", default=None, metavar="URL", callback=_broker_without_password, help=help
    )(command)


def capture_option(command):
    """--capture NAME=JSONPATH (repeatable): values kept from each 2xx JSON answer, stored with the run."""
    return click.option(
        "--capture",
        "captures",
        multiple=True,
        metavar="NAME=JSONPATH",
        help="Keep a value of each 2xx JSON answer (answers up to 64 KiB), shown by export, report and the"
        " dashboard; one missing from an answer is recorded as missing, not as an error: "
        "--capture charge_id=$.id --capture status=$.status.",
    )(command)


def pool_options(command):
    """--workers, --concurrency, --chunks: how much is in flight at once."""
    return _apply(
        command,
        [
            click.option(
                "--workers",
                type=int,
                default=None,
                metavar="N",
                help=f"Worker processes, each with one CurlMulti [default: CPU count, {default_workers()}]."
                " Local pool only: refused with --broker (a node's processes are its --chunks-in-flight).",
            ),
            click.option(
                "--concurrency",
                type=int,
                default=None,
                metavar="N",
                help="Transfers in flight per sending process: a local worker, or each of a node's"
                f" --chunks-in-flight processes [default: {run_default('concurrency')}].",
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
        ],
    )


def notify_options(command):
    """--notify-url, --notify-header, --notify-command: who is told when a pass ends."""
    return _apply(
        command,
        [
            click.option(
                "--notify-url",
                default=None,
                metavar="URL",
                help="When a pass ends, POST a JSON summary here (a 'text' field reads well: a Slack "
                "incoming-webhook URL works as is); retried with back-off, and a failure never changes "
                "the exit status.",
            ),
            click.option(
                "--notify-header",
                "notify_headers",
                multiple=True,
                metavar="'NAME: VALUE'",
                help="Header of the notice (repeatable); ${VAR} from the environment, as in --header.",
            ),
            click.option(
                "--notify-command",
                default=None,
                metavar="CMD",
                help="When a pass ends, run CMD (no shell) with the JSON summary on stdin.",
            ),
        ],
    )


def kill_switch_options(default: float | None):
    """--max-failure-rate and --min-sample: stop a pass whose rows are refused (the kill switch)."""
    shown = f"{default:g}" if default else "off"
    return lambda command: _apply(
        command,
        [
            click.option(
                "--max-failure-rate",
                default=None,
                metavar="P|off",
                help="Stop the pass (exit 4) once the share of rejected plus failed rows among those with an "
                f"outcome exceeds P; 0 or 'off' never stops [default: {shown}].",
            ),
            click.option(
                "--min-sample",
                type=int,
                default=None,
                metavar="N",
                help=f"Rows with an outcome before --max-failure-rate applies [default: {DEFAULT_MIN_SAMPLE}].",
            ),
        ],
    )


def connection_options(command):
    """--http2, --max-host-connections, --proxy/--no-proxy, --cert/--key: how requests travel."""
    return _apply(
        command,
        [
            click.option(
                "--http2/--http1.1",
                "http2",
                default=None,
                help="HTTP/2 over TLS where the server offers it (else HTTP/1.1): many transfers share a "
                "connection [default: HTTP/1.1].",
            ),
            click.option(
                "--max-host-connections",
                type=int,
                default=None,
                metavar="N",
                help="Connections per host and worker at most; transfers beyond wait for one "
                "[default: 0, no limit; with --http2 about 5 carry 500 transfers].",
            ),
            click.option(
                "--proxy",
                default=None,
                metavar="URL",
                help="Send through this proxy (http://HOST:PORT; credentials only in the https_proxy "
                "environment variable) [default: libcurl's https_proxy, http_proxy and no_proxy variables].",
            ),
            click.option("--no-proxy", "proxy", flag_value="", help="Use no proxy, whatever the environment says."),
            click.option(
                "--cert",
                "client_cert",
                type=PEM_FILE,
                default=None,
                help="Client certificate (PEM) for mutual TLS.",
            ),
            click.option(
                "--key",
                "client_key",
                type=PEM_FILE,
                default=None,
                help="Its private key (PEM); a passphrase comes from ENGINE_CLIENT_KEY_PASSWORD.",
            ),
        ],
    )


def auth_options(command):
    """--oauth2-token-url, --oauth2-scope, --sign: how the API knows the requests are ours."""
    return _apply(
        command,
        [
            click.option(
                "--oauth2-token-url",
                default=None,
                metavar="URL",
                help="Authenticate with an OAuth2 client-credentials token from this endpoint, sent as "
                "'Authorization: Bearer': the client id and secret come from the OAUTH_CLIENT_ID and "
                "OAUTH_CLIENT_SECRET environment variables. One token per machine, refreshed before it "
                "expires and once on a 401 (that 401 spends no attempt).",
            ),
            click.option("--oauth2-scope", default=None, metavar="SCOPE", help="The scope to ask the token for."),
            click.option(
                "--sign",
                default=None,
                metavar="SCHEME:${VAR}[:HEADER]",
                help="Sign each attempt: 'standard-webhooks:${SIGNING_SECRET}' adds webhook-id (the "
                "idempotency key), webhook-timestamp and webhook-signature (Standard Webhooks, secret "
                "whsec_...); 'hmac-sha256:${SECRET}:X-Signature' puts the hex HMAC-SHA256 of the body in "
                "that header. The secret only from the environment (single-quote the option).",
            ),
        ],
    )


def row_filter_options(command):
    """``--status``, ``--http-status``, ``--curl-error``, ``--error-contains``, ``--row-id``: which rows
    of a run. Their values reach :meth:`RowFilter.from_options` as typed, so an invalid one is
    refused in one line (exit 2) by the same rule as the dashboard's 400."""
    return _apply(
        command,
        [
            click.option(
                "--status",
                "states",
                multiple=True,
                metavar="STATE",
                help=f"Rows in this state (repeatable): {', '.join(STATES)}.",
            ),
            click.option("--http-status", metavar="CODE", help="Rows whose last answer had this status."),
            click.option("--curl-error", metavar="N", help="Rows whose last attempt ended in curl error N."),
            click.option("--error-contains", metavar="TEXT", help="Rows whose error contains TEXT (any case)."),
            click.option("--row-id", "row_ids", multiple=True, metavar="ID", help="The row with this id (repeatable)."),
        ],
    )


def _apply(command, options: list):
    """Decorate ``command`` with ``options``, listed in the order --help shows them."""
    for option in reversed(options):
        command = option(command)
    return command


def row_filter(params: dict, default_states, include_rejected=False, include_unknown=False) -> RowFilter:
    """The filter :func:`row_filter_options` parsed into ``params``; ``default_states`` when no
    ``--status`` is given."""
    for name in ("http_status", "curl_error", "error_contains"):
        if params[name] == "":
            raise InvalidFilter(f"invalid filter: --{name.replace('_', '-')} is empty")
    return RowFilter.from_options(
        states=params["states"],
        http_status=params["http_status"],
        curl_error=params["curl_error"],
        error_contains=params["error_contains"],
        row_ids=params["row_ids"],
        include_rejected=include_rejected,
        include_unknown=include_unknown,
        default_states=default_states,
    )


def names_rows(params: dict) -> bool:
    """Whether :func:`row_filter_options` were given at all."""
    return any(
        params[name] not in (None, ()) for name in ("states", "http_status", "curl_error", "error_contains", "row_ids")
    )


def read_row_ids(handle) -> list[str]:
    """Row ids from a file, one per line or a CSV's first column (an ``export`` file: its header
    ``row_id`` is skipped)."""
    ids = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
    return ids[1:] if ids[:1] == ["row_id"] else ids
