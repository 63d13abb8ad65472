#!/usr/bin/env python3
"""Scale-out: the same run on 1, 2 and 4 worker nodes, and the PostgreSQL ledger's cost per row.

Each node is its own process tree (``python -m engine worker``, same ``--chunks-in-flight``
and the run's same ``--concurrency``) on a real Redis broker, recording into a real
PostgreSQL ledger; the mock API answers every request after 0.5 s. Printed: wall time,
requests/s, requests/s per node, and the scaling efficiency (requests/s over n × one node's).
Then the ledger's CPU per row for loading and recording, on PostgreSQL, counted on both sides
of the connection (this process and its server backend).

All nodes share this machine's cores with the mock API and PostgreSQL, so the scaling shown
is what one machine can host; on separate machines each node brings its own cores.

Example:
    python bench/scale_out.py                      # 20,000 rows, 1, 2 and 4 nodes
    python bench/scale_out.py --rows 2000 --nodes 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import bill_through_nodes, fresh_postgres, record, table, worker_nodes, write_rows  # noqa: E402
from ledger_cost import ledger_cost  # noqa: E402

from engine.mock.process import MockProcess  # noqa: E402

LATENCY = 0.5


def run_on(nodes: int, rows: int, csv_path: str, concurrency: int, chunks_in_flight: int) -> dict:
    with fresh_postgres() as db, worker_nodes(nodes, db, "--chunks-in-flight", chunks_in_flight):
        with MockProcess(latency=LATENCY) as api:
            wall = bill_through_nodes(csv_path, api.charge_url(), db, "scale", "--concurrency", concurrency)
            stats = api.stats()
    assert stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0, stats
    return {"nodes": nodes, "wall_s": round(wall, 2), "requests_per_s": round(stats["requests"] / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=50, help="rows in flight per chunk")
    parser.add_argument("--chunks-in-flight", type=int, default=2, help="chunks per node at once")
    parser.add_argument("--ledger-rows", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as directory:
        csv_path = os.path.join(directory, "rows.csv")
        write_rows(csv_path, args.rows)
        results = [run_on(n, args.rows, csv_path, args.concurrency, args.chunks_in_flight) for n in args.nodes]
    one = results[0]["requests_per_s"] / results[0]["nodes"]
    window = args.concurrency * args.chunks_in_flight
    for r in results:
        r["per_node"] = round(r["requests_per_s"] / r["nodes"], 1)
        r["efficiency"] = round(r["per_node"] / one, 3)
        record("scale_out", f"requests/s on {r['nodes']} nodes", r["requests_per_s"], "requests/s", rows=args.rows, **r)
    print(
        f"\n{args.rows} rows at {LATENCY} s latency; each node {window} in flight (ceiling {window / LATENCY:.0f}/s)\n"
    )
    print(
        table(
            ["nodes", "wall (s)", "requests/s", "requests/s per node", "per node / one node's"],
            [[r["nodes"], r["wall_s"], r["requests_per_s"], r["per_node"], r["efficiency"]] for r in results],
        )
    )
    with fresh_postgres() as db:
        cost = ledger_cost(db, args.ledger_rows)
    for step, figures in cost.items():
        record("scale_out", f"postgres {step} µs/row", figures, "us", rows=args.ledger_rows)
    print(f"\nPostgreSQL ledger, {args.ledger_rows} rows: CPU per row (µs), this process + its server backend\n")
    print(
        table(
            ["step", "client", "server", "total"],
            [[step, f["client"], f["server"], round(f["client"] + f["server"], 1)] for step, f in cost.items()],
        )
    )


if __name__ == "__main__":
    main()
