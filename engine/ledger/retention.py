"""What the ledger keeps of customers' data, and for how long: payloads dropped once sent, runs purged.

A row's payload (the customer's fields) is needed only while the row may still be sent. Each run
stores its ``--keep-payload`` mode; the statement that records an answer drops the payload in
the same UPDATE (no second pass over the rows). ``engine purge`` deletes the rows and attempts of
runs that ended long ago, after storing the run's summary, and never a run that may still send.
"""

from __future__ import annotations

from engine.states import FAILED, IN_FLIGHT, KEY_CONFLICT, PENDING, REJECTED, RETRYING, SELECTED, SUCCEEDED, UNKNOWN

#: ``--keep-payload`` modes: keep every payload; drop it once the row succeeded (the default: a
#: rerun needs the others); also drop it once the API refused the row for good.
KEEP_ALL, KEEP_FAILED, KEEP_NONE = "all", "failed", "none"
KEEP_PAYLOAD_MODES = (KEEP_ALL, KEEP_FAILED, KEEP_NONE)
#: Outcomes whose payload ``none`` drops besides success: definitive refusals, resent only on request
#: (a row without its payload is never selected for a rerun).
REFUSED_FOR_GOOD = (REJECTED, KEY_CONFLICT)
#: Rows that a later pass may still send or settle: a run holding any is not purged unless asked.
STILL_TO_SEND = (PENDING, RETRYING, IN_FLIGHT, SELECTED, FAILED, UNKNOWN)
#: States of a run whose pass is loading or sending it (or died doing so).
UNFINISHED_RUN_STATES = ("loading", "running")

#: The run's mode, read by primary key when an answer is recorded (runs made before it: keep all).
_MODE = f"(SELECT coalesce(keep_payload, '{KEEP_ALL}') FROM runs WHERE runs.run_id = requests.run_id)"


def payload_after(outcome: str) -> str:
    """The SQL of ``requests.payload`` once an attempt with ``outcome`` (an SQL expression) is recorded."""
    refused = ", ".join(f"'{state}'" for state in REFUSED_FOR_GOOD)
    return (
        f"CASE WHEN {outcome} = '{SUCCEEDED}' AND {_MODE} <> '{KEEP_ALL}' THEN NULL"
        f" WHEN {outcome} IN ({refused}) AND {_MODE} = '{KEEP_NONE}' THEN NULL ELSE payload END"
    )
