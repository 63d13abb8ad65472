"""What a run did, read back from the ledger: the summary, in text, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import textwrap

from engine.ledger import Store
from engine.states import (
    FAILED,
    IN_FLIGHT,
    KEY_CONFLICT,
    PENDING,
    REJECTED,
    RETRYING,
    SELECTED,
    SUCCEEDED,
    UNKNOWN,
)

REPORT_FORMATS = ("text", "json", "csv")


def summarize(ledger: Store, run_id: str) -> dict:
    """The figures of one run: counts per state, attempts, speed, latency, HTTP statuses."""
    run = ledger.get_run(run_id)
    counts = ledger.counts(run_id)
    elapsed = ledger.elapsed(run_id)
    attempts = ledger.attempt_count(run_id)
    latency = ledger.latency_percentiles(run_id, (0.50, 0.95, 0.99))
    return {
        "run_id": run_id,
        "state": run["state"],
        "total": run["total"],
        "succeeded": counts[SUCCEEDED],
        "failed": counts[FAILED],
        "rejected": counts[REJECTED],
        "unknown": counts[UNKNOWN],
        "key_conflict": counts[KEY_CONFLICT],
        "pending": not_yet_sent(counts),
        "attempts": attempts,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(attempts / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {f"p{int(q * 100)}": (round(v, 1) if v is not None else None) for q, v in latency.items()},
        "http_status": ledger.status_counts(run_id),
        "insecure": bool(run["options"].get("insecure")),
        "top_error": _top_error(ledger, run_id),
        "chunks": ledger.chunk_summary(run_id),
    }


def not_yet_sent(counts: dict[str, int]) -> int:
    """Rows that will still be sent: never sent, waiting for a retry, handed out, or chosen again."""
    return counts[PENDING] + counts[RETRYING] + counts.get(IN_FLIGHT, 0) + counts[SELECTED]


def _top_error(ledger: Store, run_id: str) -> dict | None:
    found = ledger.top_error(run_id)
    return None if found is None else {"error": found[0], "rows": found[1]}


def render(summary: dict, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(summary, indent=2)
    if fmt == "csv":
        flat = {k: v for k, v in summary.items() if not isinstance(v, dict) and k not in ("top_error", "chunks")}
        flat.update({f"latency_{k}_ms": v for k, v in summary["latency_ms"].items()})
        flat.update({f"http_{k}": v for k, v in summary["http_status"].items()})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(flat))
        writer.writeheader()
        writer.writerow(flat)
        return out.getvalue().rstrip("\n")
    return _text(summary)


def _text(s: dict) -> str:
    lat = s["latency_ms"]
    statuses = ", ".join(f"{code}: {n}" for code, n in s["http_status"].items()) or "none"
    lines = [
        f"run {s['run_id']} ({s['state']})",
        f"  rows       {s['total']}: {s['succeeded']} succeeded, {s['failed']} failed, "
        f"{s['rejected']} rejected, {s['unknown']} unknown, {s.get('key_conflict', 0)} key conflicts,"
        f" {s['pending']} not yet sent",
        f"  attempts   {s['attempts']} in {s['elapsed_s']:.1f} s ({s['requests_per_s']:.0f} requests/s)",
        f"  latency    p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}, p99 {_ms(lat['p99'])}",
        f"  responses  {statuses}",
    ]
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
    lines.extend(_advice(s))
    if s.get("insecure"):
        lines.append("  WARNING    TLS certificates were not verified (--insecure)")
    return "\n".join(lines)


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
            r["state"],
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
