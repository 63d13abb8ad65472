"""What a run did, read back from the ledger: the summary, in text, JSON or CSV."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

from engine.ledger import Store
from engine.ledger.beside import ask_beside
from engine.ledger.roles import CANCELLED_FLAG, RowTotals
from engine.output.export import run_captures
from engine.states import (
    FAILED,
    IN_FLIGHT,
    KEY_CONFLICT,
    PENDING,
    REJECTED,
    RESOLVED,
    RETRYING,
    SELECTED,
    SUCCEEDED,
    UNKNOWN,
)

REPORT_FORMATS = ("text", "json", "csv")


#: The latency percentiles a summary gives.
QUANTILES = (0.50, 0.95, 0.99)


def summarize(ledger: Store, run_id: str, live: bool = False) -> dict:
    """The figures of one run, for ``report`` and for the dashboard's pages alike.

    ``live``: only what the ledger answers from its indexes (counts per state, progress, passes,
    paused), which a page may read every second; a pass under way counts until now. Otherwise
    also :func:`scans` of the run's rows and attempts (attempts, latency, HTTP statuses, the top
    error, worker nodes' chunks) and requests/s; a pass with no recorded end counts nothing. The
    latency's sort then runs on a second connection beside the rest (:func:`start_scans`).
    """
    run = ledger.get_run(run_id)
    purged = bool(run.get("summary"))  # its rows and attempts are gone, their figures were kept
    with contextlib.nullcontext() if live or purged else start_scans(ledger, run_id) as scanned:  # beside what follows
        return _summary(ledger, run_id, run, live, scanned)


def _summary(ledger: Store, run_id: str, run: dict, live: bool, scanned: Callable[[], dict] | None) -> dict:
    counts = ledger.counts(run_id)
    passes = ledger.passes(run_id)
    elapsed = _elapsed(passes, until=time.time() if live else None)
    total = sum(counts.values())  # the rows loaded so far, while it loads
    left = not_yet_sent(counts)
    done = total - left
    paused, cancelled = ledger.is_paused(run_id), ledger.is_cancelled(run_id)
    summary = {
        "run_id": run_id,
        "state": shown_state(run["state"], paused, cancelled),
        "created_at": run["created_at"],
        "total": total,
        "succeeded": counts[SUCCEEDED],
        "failed": counts[FAILED],
        "rejected": counts[REJECTED],
        "unknown": counts[UNKNOWN],
        "key_conflict": counts[KEY_CONFLICT],
        "resolved": counts[RESOLVED],
        "pending": left,
        "done": done,
        "progress": round(done / total, 4) if total else 1.0,
        "elapsed_s": round(elapsed, 3),
        "average_rows_per_s": round(per_second(done, elapsed), 1),
        "paused": paused,
        "cancelled": cancelled,
        "insecure": bool(run["options"].get("insecure")),
        "passes": passes,
        "finished_at": passes[-1]["finished_at"] if passes else None,
    }
    if live:
        return summary
    captured = ledger.capture_counts(run_id, run_captures(run))
    figures = dict(run["summary"]["scans"] if scanned is None else scanned())
    replays = figures.pop("replays", 0)  # a run purged by an earlier version kept none: its rows were gone
    summary.update(figures)
    summary["purged_at"] = run.get("purged_at")
    summary["replays"], summary["captured"] = replays, captured
    summary["requests_per_s"] = round(per_second(summary["attempts"], elapsed), 1)
    if len(passes) > 1:  # a rerun: what this pass did, apart from the whole run
        summary["last_pass"] = last_pass(ledger, run_id, passes[-1])
    return summary


def shown_state(state: str, paused: bool, cancelled: bool = False) -> str:
    """The run's state as an operator reads it: a running run an operator paused is ``paused``, one
    cancelled is ``cancelling`` until its pass ends."""
    if state != "running" or not paused:
        return state
    return "cancelling" if cancelled else "paused"


def last_pass(ledger: Store, run_id: str, the_pass: dict) -> dict:
    """The rows ``the_pass`` sent (attempted since it began), per state they are in now."""
    counts = ledger.rows_since(run_id, the_pass["started_at"])
    return {"pass_no": the_pass["pass_no"], "sent": sum(counts.values()), **{s: counts.get(s, 0) for s in PASS_STATES}}


def scans(ledger: Store, run_id: str) -> dict:
    """The figures that scan a run's rows and attempts: attempts, replays (successes the API replayed:
    an earlier attempt's charge, not a new one), latency, HTTP statuses, top error, chunks.

    All on ``ledger``'s own connection (the dashboard's is bounded in time: its scans stay there)."""
    totals = ledger.row_totals(run_id)
    return _scans(
        ledger, run_id, totals, lambda: ledger.latency_percentiles(run_id, QUANTILES, lambda: totals.answered)
    )


@contextlib.contextmanager
def start_scans(ledger: Store, run_id: str) -> Iterator[Callable[[], dict]]:
    """:func:`scans` begun, for a whole summary on the command line: the latency's sort, the longest,
    starts now on a second connection, and the rows it ranks are counted here with the other totals
    (one scan); the call given makes the other scans, then waits for the sort. On leaving, a sort still
    waiting for its count is told there will be none."""
    counted: Future[int] = Future()
    latency = ask_beside(ledger, lambda beside: beside.latency_percentiles(run_id, QUANTILES, counted.result))

    def scanned() -> dict:
        totals = ledger.row_totals(run_id)
        counted.set_result(totals.answered)
        return _scans(ledger, run_id, totals, latency)

    try:
        yield scanned
    finally:
        counted.cancel()  # nothing once counted


def _scans(ledger: Store, run_id: str, totals: RowTotals, latency: Callable[[], dict[float, float | None]]) -> dict:
    http_status = ledger.status_counts(run_id)
    top_error = _top_error(ledger, run_id)
    chunks = ledger.chunk_summary(run_id)
    return {
        "attempts": totals.attempts,
        "replays": totals.replays,
        "latency_ms": {f"p{round(q * 100)}": (round(v, 1) if v is not None else None) for q, v in latency().items()},
        "http_status": http_status,
        "top_error": top_error,
        "chunks": chunks,
    }


def per_second(count: int, seconds: float) -> float:
    """``count`` per second over ``seconds`` (0 before any time has passed)."""
    return count / seconds if seconds > 0 else 0.0


def _elapsed(passes: list[dict], until: float | None) -> float:
    """Seconds spent sending: each pass from its start to its end, or to ``until`` if it has none yet
    (None: a pass with no recorded end counts nothing, since it may have been cut off)."""
    return sum((p["finished_at"] or until or p["started_at"]) - p["started_at"] for p in passes)


def not_yet_sent(counts: dict[str, int]) -> int:
    """Rows that will still be sent: never sent, waiting for a retry, handed out, or chosen again."""
    return counts[PENDING] + counts[RETRYING] + counts.get(IN_FLIGHT, 0) + counts[SELECTED]


def _top_error(ledger: Store, run_id: str) -> dict | None:
    found = ledger.top_error(run_id)
    return None if found is None else {"error": found[0], "rows": found[1]}


#: The states a pass's own counts name.
PASS_STATES = (SUCCEEDED, FAILED, REJECTED, UNKNOWN, KEY_CONFLICT, RETRYING)


def render(summary: dict, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(summary, indent=2)
    if fmt == "csv":
        flat = {
            k: v
            for k, v in summary.items()
            if not isinstance(v, (dict, list)) and k not in ("top_error", "chunks", "last_pass")
        }
        flat.update({f"latency_{k}_ms": v for k, v in summary["latency_ms"].items()})
        flat.update({f"http_{k}": v for k, v in summary["http_status"].items()})
        flat.update({f"captured_{k}": v for k, v in summary.get("captured", {}).items()})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(flat))
        writer.writeheader()
        writer.writerow(flat)
        return out.getvalue().rstrip("\n")
    return _text(summary)


def _text(s: dict) -> str:
    lat = s["latency_ms"]
    statuses = ", ".join(f"{code}: {n}" for code, n in s["http_status"].items()) or "none"
    replays = f" ({s['replays']} of them replays of an earlier attempt)" if s.get("replays") else ""
    lines = [
        f"run {s['run_id']} ({s['state']})",
        f"  rows       {s['total']}: {s['succeeded']} succeeded{replays}, {s['failed']} failed, "
        f"{s['rejected']} rejected, {s['unknown']} unknown, {s.get('key_conflict', 0)} key conflicts,"
        f" {s['pending']} not yet sent" + (f", {s['resolved']} resolved by hand" if s.get("resolved") else ""),
        *_last_pass(s.get("last_pass")),
        f"  attempts   {s['attempts']} in {s['elapsed_s']:.1f} s ({s['requests_per_s']:.0f} requests/s)",
        f"  latency    p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}, p99 {_ms(lat['p99'])}",
        f"  responses  {statuses}",
    ]
    if s.get("captured"):
        kept = ", ".join(f"{name} {count}" for name, count in s["captured"].items())
        lines.append(f"  captured   rows with a value: {kept}")
    if s.get("top_error") and s["succeeded"] < s["total"]:
        top = s["top_error"]
        lines.append(f"  last error {top['error']} ({top['rows']} rows)")
    if s.get("chunks"):
        c = s["chunks"]
        lines.append(
            f"  chunks     {c['chunks']} sent by worker nodes: {c['resent']} sent again after a node went silent,"
            f" {c['refused']} duplicate deliveries refused, {c['dead']} dead-lettered"
            + (" (their rows wait for a rerun)" if c["dead"] else "")
        )
    if s.get("stopped"):
        lines.append(f"  stopped    {s['stopped']}")
    if s.get("purged_at"):
        lines.append(
            f"  purged     rows and attempts deleted on {time.strftime('%Y-%m-%d', time.gmtime(s['purged_at']))}"
        )
    lines.extend(_advice(s))
    if s.get("insecure"):
        lines.append("  WARNING    TLS certificates were not verified (--insecure)")
    return "\n".join(lines)


def _last_pass(counts: dict | None) -> list[str]:
    if not counts:
        return []
    named = ", ".join(f"{counts[state]} {state.replace('_', ' ')}" for state in PASS_STATES if counts[state])
    return [f"  pass {counts['pass_no']:<5} {counts['sent']} rows sent by this pass" + (f": {named}" if named else "")]


#: Width the summary's advice is wrapped to, and the indent of its continuation lines.
_ADVICE_WIDTH, _ADVICE_INDENT = 100, " " * 13


def _advice(s: dict) -> list[str]:
    """What to do about rows no pass will settle on its own: ``unknown`` and ``key_conflict``."""
    advice = []
    if s["unknown"]:
        advice.append(
            (
                "  UNKNOWN    ",
                f"{s['unknown']} rows may or may not have been charged (no answer, an answer cut off, or a"
                " 5xx/408/409/425 that may follow a charge; without keys they are not sent again). Check each with"
                f" the API (`export {s['run_id']} --status unknown` lists them), then send only those never"
                f" charged: `rerun {s['run_id']} --include-unknown --rows never-charged.txt`.",
            )
        )
    if s.get("key_conflict"):
        advice.append(
            (
                "  CONFLICT   ",
                f"{s['key_conflict']} rows were refused because their idempotency key was first sent with other"
                " parameters: the request changed since then, and the original was charged under that key."
                " A plain rerun does not send them; a new --run-id bills them again, on purpose.",
            )
        )
    return [
        textwrap.fill(
            text,
            _ADVICE_WIDTH,
            initial_indent=label,
            subsequent_indent=_ADVICE_INDENT,
            break_long_words=False,
            break_on_hyphens=False,
        )
        for label, text in advice
    ]


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def runs_table(runs: list[dict]) -> str:
    """The ``status`` command's table of every run in a ledger."""
    if not runs:
        return "no runs in this ledger"
    header = ("run", "state", "total", "succeeded", "failed", "rejected", "unknown", "key_conflict", "pending")
    rows = [
        (
            r["run_id"],
            _listed_state(r),
            r["total"],
            r[SUCCEEDED],
            r[FAILED],
            r[REJECTED],
            r[UNKNOWN],
            r[KEY_CONFLICT],
            not_yet_sent(r),
        )
        for r in runs
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in (header, *rows))


def _listed_state(run: dict) -> str:
    return shown_state(run["state"], bool(run["paused"]), run["paused"] == CANCELLED_FLAG)


def runs_json(runs: list[dict]) -> str:
    """The ``status`` command's runs as JSON: one object per run, its state as the table shows it."""
    listed = [
        {**{k: v for k, v in run.items() if k != "paused"}, "state": _listed_state(run), "paused": bool(run["paused"])}
        | {"not_yet_sent": not_yet_sent(run)}
        for run in runs
    ]
    return json.dumps(listed, indent=2)
