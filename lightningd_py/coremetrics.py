"""The daemon's own metrics: journal, plugin workers, database writer, LND link."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .pluginhost import PluginHost

__all__ = ["register_core_metrics"]


class _DaemonCollector(Collector):
    """Reads counters the daemon keeps in memory; never touches LND or the database."""

    def __init__(self, host: PluginHost) -> None:
        self._host = host

    def collect(self) -> Iterator[Metric]:
        host = self._host
        journal = host.journal
        last = GaugeMetricFamily("lightningd_journal_last_event_id", "Id of the newest journaled event")
        last.add_metric([], journal.last_id)
        yield last
        appended = CounterMetricFamily(
            "lightningd_journal_events_appended", "Events journaled since the daemon started"
        )
        appended.add_metric([], journal.appended)
        yield appended
        dups = CounterMetricFamily(
            "lightningd_journal_duplicates_dropped", "Events dropped as already journaled since start"
        )
        dups.add_metric([], journal.duplicates)
        yield dups
        lag = GaugeMetricFamily(
            "lightningd_plugin_cursor_lag_events", "Journal events not yet handled", labels=["plugin"]
        )
        handled = CounterMetricFamily(
            "lightningd_plugin_events_handled", "Events handled by the plugin's worker", labels=["plugin"]
        )
        errors = CounterMetricFamily(
            "lightningd_plugin_hook_errors", "Hook calls that raised", labels=["plugin"]
        )
        dead = CounterMetricFamily(
            "lightningd_plugin_dead_letters", "Events given up after retries", labels=["plugin"]
        )
        for name, rt in host.runtimes.items():
            lag.add_metric([name], max(0, journal.last_id - rt.cursor) if rt.impls else 0)
            handled.add_metric([name], rt.handled)
            errors.add_metric([name], rt.errors)
            dead.add_metric([name], rt.dead_letters)
        yield from (lag, handled, errors, dead)
        node = host.node
        up = GaugeMetricFamily("lightningd_lnd_up", "1 when LND is reachable and SERVER_ACTIVE")
        up.add_metric([], 1 if node.active else 0)
        yield up
        reachable = GaugeMetricFamily("lightningd_lnd_reachable", "1 when LND answers its State service")
        reachable.add_metric([], 1 if node.reachable else 0)
        yield reachable
        reconnects = CounterMetricFamily("lightningd_lnd_reconnects", "Times the LND link reconnected")
        reconnects.add_metric([], node.reconnects)
        yield reconnects
        db_ok = GaugeMetricFamily("lightningd_database_ok", "0 when the last database commit failed")
        db_ok.add_metric([], 0 if host.store_backend.failed else 1)
        yield db_ok


def register_core_metrics(host: PluginHost, registry: CollectorRegistry) -> None:
    """Register the daemon's collectors and wire its histograms to the host."""
    registry.register(_DaemonCollector(host))
    hook_duration = Histogram(
        "lightningd_plugin_hook_duration_seconds",
        "Time spent in one event hook call",
        ["plugin"],
        registry=registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
    )
    batch_size = Histogram(
        "lightningd_database_write_batch_size",
        "Units of work committed per database transaction",
        registry=registry,
        buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
    )
    batch_seconds = Histogram(
        "lightningd_database_write_batch_seconds",
        "Time to run and commit one database write batch",
        registry=registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    )
    host.hook_observers.append(lambda plugin, hook, seconds: hook_duration.labels(plugin).observe(seconds))

    def observe_batch(size: int, seconds: float) -> None:
        batch_size.observe(size)
        batch_seconds.observe(seconds)

    host.store_backend.batch_observers.append(observe_batch)
    rpc_seconds = Histogram(
        "lightningd_lnd_rpc_duration_seconds",
        "Time of one unary call to LND, by RPC",
        ["rpc"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30),
    )
    if host.lnd is not None:
        host.lnd.observers.append(lambda rpc, seconds: rpc_seconds.labels(rpc).observe(seconds))
