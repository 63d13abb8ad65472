"""``/metrics``: the ledger's figures per run in the Prometheus text format (prometheus_client)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from engine.ledger import Store

#: Latency buckets of the histogram (ms).
LATENCY_EDGES = (50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


class LedgerCollector(Collector):
    """Reads the ledger at each scrape: rows by status, attempts by HTTP status, latency, rate, paused."""

    def __init__(self, open_ledger: Callable[[], Store]):
        self.open_ledger = open_ledger

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
        with self.open_ledger() as ledger:
            for run in ledger.list_runs():
                run_id = run["run_id"]
                for status, count in ledger.counts(run_id).items():
                    rows.add_metric([run_id, status], count)
                for outcome, count in ledger.status_counts(run_id).items():
                    answers.add_metric([run_id, outcome], count)
                counts = ledger.latency_histogram(run_id, LATENCY_EDGES)
                cumulative, buckets = 0, []
                for edge, count in zip((*LATENCY_EDGES, float("inf")), counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if edge == float("inf") else str(edge), cumulative))
                latency.add_metric([run_id], buckets, sum_value=None)
                elapsed = ledger.elapsed(run_id)
                rate.add_metric([run_id], ledger.attempt_count(run_id) / elapsed if elapsed > 0 else 0.0)
                paused.add_metric([run_id], int(ledger.is_paused(run_id)))
        yield from (rows, answers, latency, rate, paused)


def registry(open_ledger: Callable[[], Store]) -> CollectorRegistry:
    """A registry holding only the ledger's figures (no process metrics of the dashboard itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(open_ledger))
    return registry
