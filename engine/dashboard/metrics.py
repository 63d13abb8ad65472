"""``/metrics``: the ledger's figures per run in the Prometheus text format (prometheus_client)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from engine.dashboard.figures import LATENCY_EDGES, Figures
from engine.ledger import Store
from engine.output.report import per_second


class LedgerCollector(Collector):
    """At each scrape, the figures the pages show: rows by status, attempts by HTTP status, latency,
    rate, paused, state (read no more often than :class:`Figures` reads them for the pages)."""

    def __init__(self, open_ledger: Callable[[], Store], figures: Figures):
        self.open_ledger, self.figures = open_ledger, figures

    def collect(self) -> Iterator:
        rows = GaugeMetricFamily("batch_engine_rows", "Rows of a run per status.", labels=["run", "status"])
        answers = CounterMetricFamily(
            "batch_engine_attempts", "Attempts of a run by HTTP status or curl error.", labels=["run", "outcome"]
        )
        latency = HistogramMetricFamily(
            "batch_engine_latency_milliseconds", "Latency of each row's last answer.", labels=["run"]
        )
        rate = GaugeMetricFamily("batch_engine_requests_per_second", "Attempts per second of a run.", labels=["run"])
        paused = GaugeMetricFamily("batch_engine_paused", "1 while an operator has paused the run.", labels=["run"])
        state = GaugeMetricFamily(
            "batch_engine_run_state",
            "1 for the run's state as status shows it (paused included).",
            labels=["run", "state"],
        )
        with self.open_ledger() as ledger:
            run_ids = ledger.run_ids()
        for run_id in run_ids:
            live = self.figures.live(run_id)
            for status in ("succeeded", "failed", "rejected", "unknown", "key_conflict", "pending"):
                rows.add_metric([run_id, status], live[status])
            paused.add_metric([run_id], int(live["paused"]))
            state.add_metric([run_id, live["state"]], 1)
            details = self.figures.details(run_id)
            if details is None:  # the first read is under way: the next scrape has them
                continue
            for outcome, count in details["http_status"].items():
                answers.add_metric([run_id, outcome], count)
            cumulative, buckets = 0, []
            for edge, count in zip((*LATENCY_EDGES, float("inf")), details["latency_histogram"], strict=True):
                cumulative += count
                buckets.append(("+Inf" if edge == float("inf") else str(edge), cumulative))
            latency.add_metric([run_id], buckets, sum_value=None)
            rate.add_metric([run_id], per_second(details["attempts"], live["elapsed_s"]))
        yield from (rows, answers, latency, rate, paused, state)


def registry(open_ledger: Callable[[], Store], figures: Figures) -> CollectorRegistry:
    """A registry holding only the ledger's figures (no process metrics of the dashboard itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(open_ledger, figures))
    return registry
