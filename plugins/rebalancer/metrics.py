"""Prometheus collector of the rebalancer, answering from the in-memory snapshot the
engine and the budget refresher keep (never LND or the database inside ``collect()``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine import Snapshot

__all__ = ["RebalancerCollector"]

PREFIX = "lightningd_rebalancer_"


class RebalancerCollector(Collector):
    """Budget, results, fees, fee policy updates, scheduler and backup freshness."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snap = snapshot

    def describe(self) -> Iterator[Metric]:
        return self._families(Snapshot())

    def collect(self) -> Iterator[Metric]:
        return self._families(self._snap)

    @staticmethod
    def _families(s: Snapshot) -> Iterator[Metric]:
        used = s.budget_spent_msat + s.budget_reserved_msat

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=value)

        yield gauge("budget_limit_msat", "Fee budget of any rolling 24 hours", s.budget_limit_msat)
        yield gauge(
            "budget_used_msat", "Fees paid plus fees reserved by attempts in flight, last 24 hours", used
        )
        yield gauge("budget_reserved_msat", "Maximum fees held by attempts in flight", s.budget_reserved_msat)
        yield gauge(
            "budget_remaining_msat",
            "Fee budget left for the next 24 hours",
            max(0, s.budget_limit_msat - used),
        )
        results = CounterMetricFamily(
            PREFIX + "rebalances", "Finished rebalances by result", labels=["result"]
        )
        for result in ("succeeded", "failed", "dry_run"):
            results.add_metric([result], s.results.get(result, 0))
        yield results
        attempts = CounterMetricFamily(PREFIX + "attempts", "Payment attempts by outcome", labels=["result"])
        for result in ("succeeded", "failed", "unknown"):
            attempts.add_metric([result], s.attempts.get(result, 0))
        yield attempts
        fees = CounterMetricFamily(PREFIX + "fees_paid_msat", "Fees paid by successful rebalances")
        fees.add_metric([], s.fees_paid_msat)
        yield fees
        updates = CounterMetricFamily(
            PREFIX + "fee_policy_updates", "Fee rate decisions by outcome", labels=["result"]
        )
        for result in ("applied", "dry_run", "failed"):
            updates.add_metric([result], s.fee_updates.get(result, 0))
        yield updates
        yield gauge("scheduler_running", "1 while the scheduler runs rounds", int(s.scheduler_running))
        yield gauge(
            "last_round_timestamp_seconds", "Unix time the last automatic round started", s.last_round
        )
        yield gauge(
            "last_backup_timestamp_seconds",
            "Unix time the channel backup file was last written (0: never)",
            s.last_backup_time,
        )
        backups = CounterMetricFamily(
            PREFIX + "backups_written", "Channel backup files written by this process"
        )
        backups.add_metric([], s.backups_written)
        yield backups
