"""What a pass's end tells ``--notify-url`` / ``--notify-command``: the message built from a
:class:`RunResult`, and the notice sent (:class:`engine.output.notify.Notice` delivers it)."""

from __future__ import annotations

from dataclasses import replace

from engine.output.notify import Notice
from engine.run.result import RunResult

#: The states a notice counts, in the order its text names them.
COUNTED = ("succeeded", "failed", "rejected", "unknown", "key_conflict", "pending")


def ending(result: RunResult) -> str:
    """How the pass ended, in one word a receiver can switch on."""
    if result.interrupted:
        return "interrupted"
    if result.stopped:
        return "stopped"
    if result.gave_up:
        return "gave_up"
    return "finished" if result.complete else "finished_with_failures"


def notice_message(result: RunResult) -> dict:
    """The JSON a notice carries; ``text`` reads as one chat message (Slack's incoming webhooks show it)."""
    s = result.summary
    counts = {state: s.get(state, 0) for state in COUNTED}
    errors = [s["top_error"]] if s.get("top_error") and s["succeeded"] < s["total"] else []
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
    if m["first_errors"]:
        top = m["first_errors"][0]
        lines.append(f"Most frequent error: {top['error']} ({top['rows']} rows)")
    if m["rerun_command"]:
        lines.append(f"Send the rest with: {m['rerun_command']}")
    return "\n".join(lines)


def tell(notice: Notice | None, result: RunResult) -> RunResult:
    """Send the notice of ``result``'s pass, if one was asked for; a failure is kept, never raised."""
    if notice is None or result.already_billed:
        return result
    return replace(result, notice_error=notice.send(notice_message(result)))
