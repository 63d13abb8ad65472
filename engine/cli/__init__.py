"""The command line: each command parses its options and calls one library function."""

from __future__ import annotations

import click

from engine import __version__
from engine.cli.cluster import worker
from engine.cli.dashboard import dashboard
from engine.cli.dashboard_user import dashboard_user
from engine.cli.ledger import cancel, export, pause, report, resume, status
from engine.cli.mock import demo, mock_api
from engine.cli.sending import bill, rerun


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


for command in (
    bill,
    rerun,
    worker,
    status,
    report,
    export,
    pause,
    resume,
    cancel,
    dashboard,
    dashboard_user,
    mock_api,
    demo,
):
    cli.add_command(command)
