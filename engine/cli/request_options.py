"""The options with which ``bill`` describes its run, stored with it so ``rerun`` sends the same: the
requests (URL, method, headers, body), the input (format, ids, field types, priority), its name and
start time, idempotency keys, which payloads are kept, back-off, and where requests may go and with
which TLS trust."""

from __future__ import annotations

import click

from engine.cli.option_groups import PEM_FILE, apply_options, run_default
from engine.cli.options import safe_run_id
from engine.ledger.retention import KEEP_PAYLOAD_MODES
from engine.request.inputs import FORMATS


def seconds_option(flag: str, help: str):
    """A ``--flag S`` option for the :class:`RunSettings` field of the same name, with its default."""
    return click.option(
        flag, type=float, default=run_default(flag[2:].replace("-", "_")), show_default=True, metavar="S", help=help
    )


def request_options(command):
    """--url through --ca-bundle: what ``bill`` sends, and how, for every row of its input."""
    return apply_options(
        command,
        [
            click.option(
                "--url", required=True, help="Request URL; {field} placeholders are filled from the row, URL-encoded."
            ),
            click.option("--method", default=run_default("method"), show_default=True, help="HTTP method."),
            click.option(
                "--header",
                "headers",
                multiple=True,
                metavar="'NAME: VALUE'",
                help="Request header (repeatable); {field} from the row, ${VAR} from the environment.",
            ),
            click.option(
                "--secret-header",
                "secret_headers",
                multiple=True,
                metavar="NAME",
                help="Treat this header as a secret too (Authorization, Cookie and X-Api-Key always are): "
                "its value must come from ${VAR}.",
            ),
            click.option(
                "--body-template",
                type=click.File("r", encoding="utf-8"),
                default=None,
                help="JSON file with {field} placeholders for the body [default: the row as a JSON object].",
            ),
            click.option("--form", is_flag=True, help="Send the body form-encoded instead of as JSON."),
            click.option(
                "--format",
                "fmt",
                type=click.Choice(FORMATS),
                default=None,
                help="Input format [default: from the file's extension; needed for '-' (stdin)].",
            ),
            click.option(
                "--id-field",
                default=run_default("id_field"),
                show_default=True,
                help="Column or key holding each row's unique id.",
            ),
            click.option(
                "--field",
                "field_types",
                multiple=True,
                metavar="NAME:TYPE",
                help="Send this field as int, float, bool or str (CSV values are text otherwise): "
                "--field amount:int --field vip:bool. Values that do not parse are refused with their line.",
            ),
            click.option(
                "--priority-field",
                default=None,
                metavar="FIELD",
                help="Numeric column: higher values are sent first; ties keep input order.",
            ),
            click.option(
                "--run-id",
                default=None,
                callback=safe_run_id,
                help="Name of this run [default: run-<date>-<time>-<random>].",
            ),
            click.option(
                "--not-before",
                default=None,
                metavar="TIME",
                help="Send nothing before this time (ISO 8601, or HH:MM today); waits with a countdown.",
            ),
            click.option("--delay", type=float, default=None, metavar="S", help="Send nothing for this many seconds."),
            click.option(
                "--idempotency-header",
                default=run_default("idempotency_header"),
                show_default=True,
                help="Header carrying each row's stable idempotency key.",
            ),
            click.option(
                "--idempotency-key-field",
                default=None,
                metavar="FIELD",
                help="Use this row field as the key [default: <run-id>:<row id>].",
            ),
            click.option(
                "--no-idempotency",
                is_flag=True,
                help="Send no key; a request whose outcome is unknown is then not retried but marked 'unknown'.",
            ),
            click.option(
                "--keep-payload",
                type=click.Choice(KEEP_PAYLOAD_MODES),
                default=None,
                help="Which rows' payloads the ledger keeps once answered: all; failed (drop a row's payload as it"
                " succeeds, keeping its key and status; a rerun needs the others); none (also drop those the API"
                " refused for good) [default: failed].",
            ),
            seconds_option("--backoff-base", "First retry waits up to this long; doubling each time (full jitter)."),
            seconds_option("--backoff-cap", "Longest back-off between attempts."),
            seconds_option("--retry-after-cap", "Longest wait honoured from a Retry-After header."),
            seconds_option("--connect-timeout", "Longest time to open a connection."),
            click.option(
                "--allow-host",
                "allow_hosts",
                multiple=True,
                metavar="HOST[:PORT]",
                help="Another destination host requests may go to (the --url host always may).",
            ),
            click.option("--insecure", is_flag=True, help="Do not verify TLS certificates (printed in the summary)."),
            click.option(
                "--ca-bundle",
                type=PEM_FILE,
                default=None,
                help="CA certificates to verify TLS with [default: libcurl's].",
            ),
        ],
    )
