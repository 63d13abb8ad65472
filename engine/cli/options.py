"""What every command shares: the ledger and broker options, a new run's id, and one line (no traceback)
per error. The senders' option groups are in :mod:`engine.cli.option_groups`, the row filter options in
:mod:`engine.cli.filters` (re-exported here for the commands that read rows)."""

from __future__ import annotations

import functools
import logging
import re
import sys
from urllib.parse import urlsplit

import click

from engine.errors import EngineError, UsageError
from engine.extras import CLUSTER, MissingExtra, require
from engine.output.logs import logging_ready, setup_logging
from engine.run.result import EXIT_INTERRUPTED

DEFAULT_DB = "engine.db"
#: The operator's lines on stderr (errors, what to do next): through logging, so --log-format applies.
say = logging.getLogger("engine.cli")
#: A new run id: shell-safe in a printed command and safe in a URL (old ledgers' ids are still read).
RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")


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
