"""What a pass's end tells ``--notify-url`` / ``--notify-command``: the message built from a
:class:`RunResult`, and the notice sent (:class:`engine.output.notify.Notice` delivers it)."""

from __future__ import annotations

from dataclasses import replace

from engine.ledger import Store
from engine.ledger.selection import RowFilter
from engine.output.notify import Notice
from engine.run.result import RunResult
from engine.states import FAILED, KEY_CONFLICT, REJECTED, UNKNOWN

#: The states a notice counts, in the order its text names them.
COUNTED = ("succeeded", "failed", "rejected", "unknown", "key_conflict", "pending")
#: Rows whose error a notice quotes at most (the first, in input order).
FIRST_ERRORS = 5
#: The states whose rows a notice quotes the errors of.
ERROR_STATES = (FAILED, REJECTED, UNKNOWN, KEY_CONFLICT)


def ending(result: RunResult) -> str:
    """How the pass ended, in one word a receiver can switch on."""
    if result.interrupted:
        return "interrupted"
    if result.stopped:
        return "stopped"
    if result.gave_up:
        return "gave_up"
    return "finished" if result.complete else "finished_with_failures"


def first_errors(ledger: Store, run_id: str) -> list[dict]:
    """The first rows that did not succeed, with their last error (as the ledger keeps it: redacted)."""
    rows = RowFilter.from_options(states=ERROR_STATES, include_rejected=True, include_unknown=True)
    found = ledger.find_rows(run_id, rows, limit=FIRST_ERRORS)
    return [
        {"row_id": row["row_id"], "state": row["status"], "http_status": row["http_status"], "error": _error(row)}
        for row in found
    ]


def _error(row: dict) -> str | None:
    """A row's error in a few words: the recorded one, else its answer's status (a 4xx is recorded as a status)."""
    if row["error"]:
        return row["error"]
    return f"HTTP {row['http_status']}" if row["http_status"] else None


def notice_message(result: RunResult, errors: list[dict]) -> dict:
    """The JSON a notice carries; ``text`` reads as one chat message (Slack's incoming webhooks show it)."""
    s = result.summary
    counts = {state: s.get(state, 0) for state in COUNTED}
    top = s.get("top_error") if s["succeeded"] < s["total"] else None
    reason = result.stopped or result.gave_up
    message = {
        "run_id": result.run_id,
        "ending": ending(result),
        "exit_code": result.exit_code,
        "reason": reason,
        "total": s["total"],
        "counts": counts,
        "duration_s": s.get("elapsed_s", 0.0),
        "rows_per_s": s.get("average_rows_per_s", 0.0),
        "top_error": top,
        "first_errors": errors,
        "rerun_command": None if result.complete else result.rerun_command,
    }
    message["text"] = _text(message)
    return message


def _text(m: dict) -> str:
    c = m["counts"]
    words = {"finished": "finished", "finished_with_failures": "finished with rows not succeeded"}
    head = f"batch-engine run {m['run_id']} {words.get(m['ending'], m['ending'].replace('_', ' '))}"
    lines = [
        f"{head}: {c['succeeded']:,} of {m['total']:,} succeeded, {c['failed']:,} failed, {c['rejected']:,} rejected,"
        f" {c['unknown']:,} unknown, {c['pending']:,} not yet sent"
        f" ({m['duration_s']:.1f} s, {m['rows_per_s']:g} rows/s)"
    ]
    if m["reason"]:
        lines.append(f"Why: {m['reason']}")
    if m["top_error"]:
        top = m["top_error"]
        lines.append(f"Most frequent error: {top['error']} ({top['rows']} rows)")
    if m["rerun_command"]:
        lines.append(f"Send the rest with: {m['rerun_command']}")
    return "\n".join(lines)


def tell(notice: Notice | None, result: RunResult, ledger: Store) -> RunResult:
    """Send the notice of ``result``'s pass, if one was asked for; a failure is kept, never raised."""
    if notice is None or result.already_billed:
        return result
    message = notice_message(result, first_errors(ledger, result.run_id))
    return replace(result, notice_error=notice.send(message))
