"""The states a ledger row can be in: plain names, importable without pycurl or SQL."""

from __future__ import annotations

PENDING, RETRYING, SUCCEEDED = "pending", "retrying", "succeeded"
FAILED, REJECTED, UNKNOWN = "failed", "rejected", "unknown"
#: The API answered that this row's idempotency key was first used with other parameters (Stripe's
#: 400 ``idempotency_error``, the IETF draft's 422): the request changed since that key was first
#: sent, and the original was charged under it. Never retried, never resent by a plain rerun.
KEY_CONFLICT = "key_conflict"
#: A row handed to a worker of a run without idempotency keys, not yet answered: if the
#: pass dies, nobody knows whether it was sent, so the next pass makes it ``unknown``.
IN_FLIGHT = "in_flight"
#: A row an operator chose to send again (``rerun`` with a filter, the dashboard's button):
#: the next pass sends exactly these.
SELECTED = "selected"
#: A row an operator marked resolved (settled by hand, outside the run): it leaves the failures
#: view and no pass ever sends it again (it is in no resend state, and no opt-in names it).
RESOLVED = "resolved"
#: The states an operator may mark resolved: ended without succeeding, and no pass holds them.
RESOLVABLE = (FAILED, REJECTED, UNKNOWN, KEY_CONFLICT)
#: The states a report counts; a row is done only when it ``succeeded``.
STATES = (PENDING, RETRYING, SUCCEEDED, FAILED, REJECTED, UNKNOWN, KEY_CONFLICT, SELECTED, RESOLVED)
#: States a later pass sends again by default.
RESEND_STATES = (PENDING, RETRYING, FAILED, SELECTED)

#: A chunk's states (runs sent through a broker): waiting for a node, being sent, recorded,
#: or given up after too many deliveries (its rows stay as they are, for a rerun).
CHUNK_QUEUED, CHUNK_RUNNING, CHUNK_DONE, CHUNK_DEAD = "queued", "running", "done", "dead"
#: A chunk of an earlier pass that no node had taken when a later pass began: never sent.
CHUNK_RETIRED = "retired"
#: An attempt's outcome (never a row's state) when it was sent under a claim another node has
#: since taken over (a frozen node's fencing token is stale): kept for the audit, not as the row's result.
SUPERSEDED = "superseded"
