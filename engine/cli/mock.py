"""``mock-api`` and ``demo``: the bundled fake billing API, and a run against it."""

from __future__ import annotations

import dataclasses
import sys

import click

from engine.cli.options import engine_errors
from engine.mock.config import MockConfig


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


@click.command("mock-api")
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


@click.command()
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
    from engine.config import default_workers
    from engine.mock.demo import run_demo

    sys.exit(run_demo(users, workers or default_workers(), concurrency, directory, quiet))
