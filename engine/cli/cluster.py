"""``worker``: a worker node that sends the chunks a coordinator enqueues on the broker."""

from __future__ import annotations

import sys

import click

from engine.cli.options import broker_option, db_option, engine_errors
from engine.extras import CLUSTER, require
from engine.output.logs import setup_logging


@click.command()
@broker_option
@db_option
@click.option(
    "--chunks-in-flight",
    type=int,
    default=4,
    show_default=True,
    metavar="N",
    help="Chunks this node sends at once, each in its own pool process with its own CurlMulti.",
)
@click.option(
    "--visibility-timeout",
    type=float,
    default=None,
    metavar="S",
    help="Seconds before a chunk taken by a node that vanished is delivered again [default: 300].",
)
@engine_errors
def worker(broker, db, chunks_in_flight, visibility_timeout):
    """Run a worker node: take chunk ids from the broker, send their rows, record them in the ledger.

    Start one per machine (or several); header secrets come from this machine's environment.

    \b
    Example:
        export API_TOKEN=sk_live_…   # the variables the run's --header lines name
        python -m engine worker --broker redis://queue.internal:6379/0 \\
            --db postgresql://billing@db.internal/billing --chunks-in-flight 4
    """
    require(CLUSTER)
    from engine.cluster.app import VISIBILITY_TIMEOUT
    from engine.cluster.node import run_node

    if not broker:
        raise click.UsageError("--broker (or ENGINE_BROKER) is required")
    root = click.get_current_context().find_root().params
    # the node's lines (one per chunk) on this stderr, taken before Celery redirects it
    setup_logging(root.get("log_level") or "INFO", root.get("log_format") or "text", stream=sys.stderr)
    run_node(broker, db, chunks_in_flight, visibility_timeout or VISIBILITY_TIMEOUT)
