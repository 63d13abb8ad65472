"""Which rows of a run a command acts on: the filter options (:func:`row_filter_options`), the
:class:`~engine.ledger.selection.RowFilter` they make, and row ids read from a file."""

from __future__ import annotations

import csv

import click

from engine.cli.option_groups import apply_options
from engine.ledger.selection import InvalidFilter, RowFilter
from engine.states import STATES


def row_filter_options(command):
    """``--status``, ``--http-status``, ``--curl-error``, ``--error-contains``, ``--row-id``: which rows
    of a run. Their values reach :meth:`RowFilter.from_options` as typed, so an invalid one is
    refused in one line (exit 2) by the same rule as the dashboard's 400."""
    return apply_options(
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
