"""The command line: each command parses its options and calls one library function.

The top-level group owns what every command shares: ``--config FILE`` (read into click's
``default_map``, :mod:`engine.cli.config`), the logging choice (``--log-level``, ``--log-format``,
:mod:`engine.output.logs`) and tracing (``--otel``, :mod:`engine.tracing`, imported only when on).
"""

from __future__ import annotations

import click

from engine import __version__
from engine.cli.config import ConfigFileError, load_default_map, wire_environment
from engine.cli.lazy import LazyGroup
from engine.cli.options import EngineClickError
from engine.output.logs import LOG_FORMATS, LOG_LEVELS, setup_logging
from engine.tracing import setup_tracing, span
from engine.tracing import shutdown as shutdown_tracing

#: Each command and where it is defined: its module is imported only when it runs (or help lists it).
COMMANDS = {
    "bill": "engine.cli.sending:bill",
    "rerun": "engine.cli.sending:rerun",
    "reconcile": "engine.cli.reconcile:reconcile",
    "worker": "engine.cli.cluster:worker",
    "status": "engine.cli.ledger:status",
    "report": "engine.cli.ledger:report",
    "export": "engine.cli.ledger:export",
    "pause": "engine.cli.ledger:pause",
    "resume": "engine.cli.ledger:resume",
    "purge": "engine.cli.ledger:purge",
    "cancel": "engine.cli.ledger:cancel",
    "dashboard": "engine.cli.dashboard:dashboard",
    "dashboard-user": "engine.cli.dashboard_user:dashboard_user",
    "mock-api": "engine.cli.mock:mock_api",
    "demo": "engine.cli.mock:demo",
    "config": "engine.cli.config_show:config",
}
#: The commands that run a pass: each is one run span.
TRACED_COMMANDS = ("bill", "rerun")


def _read_config(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    """Eager: the file's values become the defaults before any other option is read."""
    if path and not ctx.resilient_parsing:
        try:
            ctx.default_map = load_default_map(ctx.command, path)  # type: ignore[arg-type]
        except ConfigFileError as err:
            raise EngineClickError(str(err), err.exit_code) from None
    return path


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100, "auto_envvar_prefix": "ENGINE"},
)
@click.version_option(__version__, prog_name="batch-engine")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    envvar="ENGINE_CONFIG",
    show_envvar=True,
    is_eager=True,
    expose_value=True,
    callback=_read_config,
    metavar="FILE",
    help="TOML file of option values: top-level keys for every command, a [COMMAND] table each "
    "(the command line and ENGINE_* variables win over it). No secrets: ${VAR} references only.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Least severe log record written to stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="Log records on stderr as text, or as one JSON object per line (time, level, logger, run_id, "
    "chunk, node, message); json also turns the progress bar into a progress record every few seconds.",
)
@click.option(
    "--otel/--no-otel",
    default=False,
    help="OpenTelemetry traces (a span per run and per chunk) through the OTEL_* variables "
    "(pip install batch-engine[otel]) [default: on when OTEL_EXPORTER_OTLP_ENDPOINT is set].",
)
@click.pass_context
def cli(ctx, config, log_level, log_format, otel):
    """Send one HTTP request per input row, fast, retried, exactly once in effect, with a ledger.

    Every option can also come from an ENGINE_<OPTION> variable (or ENGINE_<COMMAND>_<OPTION>
    for one command) and from --config FILE; the command line wins, then the environment,
    then the file, then the default. 'config show COMMAND' prints what is in effect.

    \b
    Example:
        export API_TOKEN=sk_test_123
        python -m engine bill customers.csv \\
            --url 'https://api.example.com/v1/customers/{id}/charges' \\
            --header 'Authorization: Bearer ${API_TOKEN}' --chunks 100
    """
    setup_logging(log_level, log_format)
    setup_tracing(otel)
    ctx.call_on_close(shutdown_tracing)
    if ctx.invoked_subcommand in TRACED_COMMANDS:  # the run's span: the parent of its chunks' spans
        ctx.with_resource(span("run", command=ctx.invoked_subcommand))


wire_environment(cli)
