"""Prometheus metrics of webhook delivery.

Counters and the latency histogram are updated by the delivery workers as attempts
finish; the queue depth is read from the workers' in-memory counts at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["WebhookMetrics"]

# Deliveries to a local backend take milliseconds; retries stretch to hours.
_LATENCY_BUCKETS = (
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    1800,
    7200,
    36000,
)


class _QueueDepth(Collector):
    def __init__(self, depths: Callable[[], Mapping[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "lightningd_webhook_queue_depth",
            "Deliveries waiting to be delivered, per endpoint",
            labels=["endpoint"],
        )
        for endpoint, depth in self._depths().items():
            gauge.add_metric([endpoint], depth)
        yield gauge


class WebhookMetrics:
    """The plugin's collectors, created unregistered and registered once by
    ``ldp_register_metrics``."""

    def __init__(self, depths: Callable[[], Mapping[str, int]]) -> None:
        self.deliveries = Counter(
            "lightningd_webhook_deliveries",
            "Deliveries that reached a final state, by endpoint and result (delivered or failed)",
            ["endpoint", "result"],
            registry=None,
        )
        self.attempts = Counter(
            "lightningd_webhook_attempts",
            "HTTP attempts, by endpoint and outcome (success, http_error, timeout, connection_error)",
            ["endpoint", "outcome"],
            registry=None,
        )
        self.latency = Histogram(
            "lightningd_webhook_delivery_latency_seconds",
            "From the event being observed to the endpoint's 2xx, retries included",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )
        self._depth = _QueueDepth(depths)

    def register(self, registry: CollectorRegistry) -> None:
        for collector in (self.deliveries, self.attempts, self.latency, self._depth):
            registry.register(collector)
