"""``engine demo``: bill fake customers through the bundled mock API, rerun what failed, summarize."""

from __future__ import annotations

import csv
import os
import random
import tempfile

import click

from engine.config import RunSettings
from engine.mock.process import MockProcess
from engine.output.report import render
from engine.run.runner import RunResult, bill, rerun

#: Latency of the demo's mock API (s): the slow billing API of the README.
DEMO_LATENCY = 1.6
#: Share of customers the mock API fails during the first pass, so there is something to rerun.
DEMO_FAIL_RATE = 0.01
#: Random transient 500s that the retry policy absorbs within the pass.
DEMO_ERROR_RATE = 0.02


def write_customers(path: str, count: int, seed: int = 7) -> None:
    """A CSV of ``count`` fake customers with an amount to charge each."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "email", "amount_cents", "currency"])
        for n in range(1, count + 1):
            writer.writerow([f"cus_{n:07d}", f"customer{n}@example.com", rng.randint(500, 5000), "eur"])


def run_demo(users: int, workers: int, concurrency: int, directory: str | None, quiet: bool = False) -> int:
    """Run the whole demo; returns the exit code (0 when every customer was charged once).

    Without ``directory`` the customers and the ledger go to a temporary folder, removed at the end
    (whatever happens): a demo leaves nothing behind. A given ``directory`` is kept.
    """
    say = (lambda *a: None) if quiet else click.echo
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        return _demo_in(directory, users, workers, concurrency, quiet, say, kept=True)
    with tempfile.TemporaryDirectory(prefix="engine-demo-") as temporary:
        code = _demo_in(temporary, users, workers, concurrency, quiet, say, kept=False)
    say(f"removed {temporary} (give --dir DIR to keep the customers and the ledger)")
    return code


def _demo_in(directory: str, users: int, workers: int, concurrency: int, quiet: bool, say, kept: bool) -> int:
    customers, db = os.path.join(directory, "customers.csv"), os.path.join(directory, "demo.db")
    write_customers(customers, users)
    with MockProcess(latency=DEMO_LATENCY, jitter=0.1, p500=DEMO_ERROR_RATE, fail_rate=DEMO_FAIL_RATE) as api:
        say(
            f"mock billing API on {api.base_url}: {DEMO_LATENCY} s per request, {DEMO_ERROR_RATE:.0%} random 500s, "
            f"{DEMO_FAIL_RATE:.0%} of customers failing until it heals"
        )
        say(
            f"billing {users} customers from {customers}: serially this would take "
            f"{users * DEMO_LATENCY / 3600:.1f} hours"
        )
        settings = RunSettings(
            url=api.charge_url(), workers=workers, concurrency=concurrency, max_attempts=3, backoff_cap=4.0
        )
        first = bill(db=db, input_path=customers, settings=settings, quiet=quiet)
        say(render(first.summary))
        result: RunResult = first
        if not first.complete:
            api.configure(fail_rate=0.0)
            say(f"\nthe API healed; rerunning what failed: {first.rerun_command}")
            result = rerun(db=db, run_id=first.run_id, quiet=quiet)
            say(render(result.summary))
        stats = api.stats()
    say(
        f"\nmock API: {stats['customers_charged']} customers charged, "
        f"{stats['customers_charged_more_than_once']} charged more than once, {stats['replays']} replays"
    )
    if kept:
        say(f"ledger: {db}  (try: python -m engine report {result.run_id} --db {db})")
    ok = result.complete and stats["customers_charged"] == users and stats["customers_charged_more_than_once"] == 0
    return 0 if ok else 1
