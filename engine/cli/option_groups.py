"""The option groups of the commands that send (``bill``, ``rerun``): the pool and its pacing, notices,
the kill switch, how requests travel, how the API knows them; and the defaults they show
(:class:`~engine.config.RunSettings` fields).

A group is one decorator so both commands list the same options, in the same order, with the same help.
"""

from __future__ import annotations

import click

from engine.config import RunSettings, default_of, default_workers
from engine.ledger import BUSY_TIMEOUT
from engine.run.killswitch import DEFAULT_MIN_SAMPLE

#: A certificate or key file: it must exist, and is stored with the run as an absolute path, so a
#: ``rerun`` from another directory finds it.
PEM_FILE = click.Path(exists=True, dir_okay=False, resolve_path=True)


def run_default(name: str):
    """The default of the :class:`RunSettings` field ``name`` (what --help shows)."""
    return default_of(RunSettings, name)


def apply_options(command, options: list):
    """Decorate ``command`` with ``options``, listed in the order --help shows them."""
    for option in reversed(options):
        command = option(command)
    return command


def pool_options(command):
    """--workers, --concurrency, --chunks: how much is in flight at once."""
    return apply_options(
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
    return apply_options(
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
    return lambda command: apply_options(
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
    return apply_options(
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
    return apply_options(
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
