"""The optional wings, the extra that installs each, and the one line said when one is missing.

A plain ``pip install batch-engine`` is the embedded default: a SQLite ledger and the local pool
(pycurl, click, tqdm, sqlite-utils, orjson). The PostgreSQL ledger, the worker nodes and the
dashboard need packages of their own, installed as extras (as Celery and dramatiq ship theirs).
Their modules are imported only where the wing is used, through :func:`require`, so a missing
package is one clear line naming the extra, never a traceback in the middle of a run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from engine.errors import UsageError

#: The package this project is installed as (what ``pip install`` names).
DISTRIBUTION = "batch-engine"


class MissingExtra(UsageError):
    """A wing was asked for whose packages are not installed."""


@dataclass(frozen=True)
class Wing:
    """An optional part: what the operator calls it, its extra, and the modules that use its packages."""

    name: str
    extra: str
    modules: tuple[str, ...]
    #: The top-level packages of the extra (a missing one of these is the extra's fault, not a bug).
    packages: frozenset[str]

    def missing(self) -> str:
        return f"{self.name} needs: pip install '{DISTRIBUTION}[{self.extra}]'"


POSTGRES = Wing(
    "the PostgreSQL ledger",
    "postgres",
    ("engine.ledger.postgres",),
    frozenset({"psycopg", "psycopg_binary"}),
)
CLUSTER = Wing(
    "the worker nodes' backend (--broker)",
    "cluster",
    ("engine.cluster.app", "engine.cluster.node"),
    frozenset({"celery", "kombu", "billiard", "redis", "vine", "amqp"}),
)
DASHBOARD = Wing(
    "the dashboard",
    "dashboard",
    ("engine.dashboard.app", "uvicorn"),
    frozenset({"starlette", "uvicorn", "jinja2", "multipart", "python_multipart", "prometheus_client"}),
)


def require(wing: Wing) -> None:
    """Import the modules of ``wing``, or raise :class:`MissingExtra` naming the extra to install."""
    for module in wing.modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] not in wing.packages:
                raise  # a missing module of our own is a bug, shown as one
            raise MissingExtra(wing.missing()) from None
