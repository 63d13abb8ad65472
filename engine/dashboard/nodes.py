"""The nodes page's figures: every worker node the broker's roster announces or the ledger's chunks
name, with its host, version, ledger, last heartbeat, chunks held, rows per second and last error;
one that is silent or refusing chunks is marked.

The roster (announcements and refusals) lives in the broker's Redis; chunks held, heartbeats and
rows come from the ledger's ``chunks`` table (the database's clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.ledger import Store

#: A node whose last chunk heartbeat is older than this, or that no longer announces itself while
#: holding chunks, is silent (s).
SILENT_AFTER = 30.0
#: How far back rows per second look (s).
NODE_RATE_WINDOW = 60.0
#: Nodes the ledger names are listed if heard from within this (s): older ones are history.
NODES_REMEMBERED = 3600.0


def node_of(holder: str) -> str:
    """The node (``host:pid``, as it announces itself) of a chunk's holder (``host:node pid:process pid``)."""
    return ":".join(holder.split(":")[:2])


def _per_node(figures: list[dict]) -> dict[str, dict]:
    """The ledger's figures per pool process, summed per node."""
    nodes: dict[str, dict] = {}
    for found in figures:
        node = nodes.setdefault(node_of(found["node"]), {"held": 0, "rows": 0, "heartbeat_at": None})
        node["held"] += int(found["held"] or 0)
        node["rows"] += int(found["rows"] or 0)
        node["heartbeat_at"] = max(filter(None, (node["heartbeat_at"], found["heartbeat_at"])), default=None)
    return nodes


class NodeBoard:
    """Reads the roster on ``broker`` and the ledger's chunks for the nodes page."""

    def __init__(self, broker: str):
        from engine.cluster.app import redis_client  # Celery and Redis: only with a broker
        from engine.cluster.roster import Roster

        self.broker = broker
        self.roster = Roster(redis_client(broker))

    def nodes(self, open_ledger: Callable[[], Store]) -> list[dict]:
        """One dict per node: ``name, host, version, ledger, heartbeat_at, held, rows_per_s, error, red``."""
        now = time.time()
        live = self.roster.live()
        with open_ledger() as store:
            ledger_id = store.ledger_id()
            figures = _per_node(store.node_figures(now - NODE_RATE_WINDOW))
            refusals = {node_of(name): why for name, why in self._refusals(store).items()}
        names = set(live) | {n for n, f in figures.items() if (f["heartbeat_at"] or 0) > now - NODES_REMEMBERED}
        return [
            self._node(name, live.get(name), figures.get(name), refusals.get(name), ledger_id, now)
            for name in sorted(names)
        ]

    def _refusals(self, store: Store) -> dict[str, str]:
        """Why nodes refused the chunks of the runs being sent (their last pass)."""
        refused: dict[str, str] = {}
        for run in store.list_runs():
            if run["state"] == "running":
                passes = store.passes(run["run_id"])
                if passes:
                    refused.update(self.roster.refusals(run["run_id"], passes[-1]["pass_no"]))
        return refused

    @staticmethod
    def _node(
        name: str, card: dict | None, figures: dict | None, refusal: str | None, ledger_id: str, now: float
    ) -> dict:
        held = figures["held"] if figures else 0
        heartbeat = figures["heartbeat_at"] if figures else None
        silent = card is None or (held > 0 and (heartbeat or 0) < now - SILENT_AFTER)
        other_ledger = card is not None and card["ledger"] != ledger_id
        error = refusal or ("silent: no announcement on the broker" if card is None else None)
        if card is not None and other_ledger and not error:
            error = f"serves another ledger ({card['ledger']})"
        return {
            "name": name,
            "host": card["host"] if card else name.rsplit(":", 1)[0],
            "version": card["version"] if card else "-",
            "ledger": "-" if card is None else ("this ledger" if not other_ledger else card["ledger"]),
            "heartbeat_at": heartbeat,
            "held": held,
            "rows_per_s": round(figures["rows"] / NODE_RATE_WINDOW, 1) if figures else 0.0,
            "error": error,
            "red": silent or refusal is not None or other_ledger,
        }
