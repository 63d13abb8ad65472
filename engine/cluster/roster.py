"""Who the nodes are, and which of them refused a pass's chunks and why: kept in the broker's Redis.

Each node announces itself (host, pid, engine version, ledger identity) under a key that expires
unless renewed, so a node that died or is frozen drops off the roster within seconds. A node
that cannot serve a run (a ``${VAR}`` it lacks, another ledger, another version) writes why
under the pass's refusals: it cannot write that into the run's ledger (it may not even have
it), and the coordinator reads both here to name the node, and to end the pass when every
live node refused. Only ids and reasons are written: never a payload, a header or a secret.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass

import redis

from engine.cluster.link import UNREACHABLE

#: How often a node renews its announcement (s), and how long an unrenewed one lasts.
ANNOUNCE_EVERY, ANNOUNCE_TTL = 2.0, 7
#: How long a pass's refusals are kept (s): longer than any pass waits on them.
REFUSALS_TTL = 86400
PREFIX = "batch-engine"


@dataclass(frozen=True)
class NodeCard:
    """A node as it announces itself."""

    host: str
    pid: int
    version: str
    ledger: str

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"


def _refusals_key(run_id: str, pass_no: int) -> str:
    return f"{PREFIX}:refused:{run_id}:{pass_no}"


class Roster:
    """The nodes' announcements and refusals, read and written through one Redis client."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def announce(self, card: NodeCard) -> None:
        self.client.set(f"{PREFIX}:node:{card.name}", json.dumps(asdict(card)), ex=ANNOUNCE_TTL)

    def live(self) -> dict[str, dict]:
        """The nodes that announced themselves within the last few seconds, by name."""
        found = {}
        for key in self.client.scan_iter(match=f"{PREFIX}:node:*", count=100):
            text = self.client.get(key)
            if text is not None:
                card = json.loads(text)
                found[f"{card['host']}:{card['pid']}"] = card
        return found

    def refuse(self, run_id: str, pass_no: int, node: str, reason: str) -> None:
        key = _refusals_key(run_id, pass_no)
        self.client.hset(key, node, reason)
        self.client.expire(key, REFUSALS_TTL)

    def refusals(self, run_id: str, pass_no: int) -> dict[str, str]:
        """The nodes that refused the pass's chunks, and why."""
        found = self.client.hgetall(_refusals_key(run_id, pass_no))
        return {_text(node): _text(why) for node, why in found.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def keep_announcing(roster: Roster, card: NodeCard) -> threading.Thread:
    """Announce ``card`` now and every few seconds, in a daemon thread of the node's main process (a
    frozen node stops renewing it, and drops off the roster)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                roster.announce(card)
            except UNREACHABLE:
                pass  # the broker is away: the node is not consuming either
            stop.wait(ANNOUNCE_EVERY)

    roster.announce(card)
    thread = threading.Thread(target=loop, name="announce", daemon=True)
    thread.start()
    return thread
