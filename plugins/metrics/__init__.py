"""metrics: Prometheus metrics of the node, its activity and the daemon, and the
monitoring and analytics API.

* ``GET /metrics`` on its own address (``[plugins.metrics] listen``): node metrics
  from an in-memory snapshot a background service refreshes, activity counters from
  durable totals fed by journal events; the core's own metrics and other plugins'
  (webhook deliveries) are in the same registry.
* ``/v1/analytics/...`` on the HTTP API (role readonly): dashboard summary, payment,
  channel and fee statistics, transaction history, period reports, streamed exports,
  all read from this plugin's own tables (see :mod:`.ledger`).

Every metric and endpoint is described in ``docs/metrics.md``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from lightningd_py.events import (
    ChannelEvent,
    Event,
    NodeStateEvent,
)
from lightningd_py.hookspecs import hookimpl
from lightningd_py.web import ApiError

from .collectors import ActivityCollector, NodeCollector
from .ledger import MIGRATIONS
from .routes import register_routes
from .runtime import MetricsRuntime, MetricsSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from lightningd_py.daemon import Daemon
    from lightningd_py.store import Migration
    from lightningd_py.web import RouteRegistry

__all__ = [
    "MetricsSettings",
    "ldp_background_tasks",
    "ldp_config_schema",
    "ldp_event_batch",
    "ldp_health",
    "ldp_migrations",
    "ldp_register_metrics",
    "ldp_register_routes",
    "ldp_shutdown",
    "ldp_startup",
]

# The plugin is a module (as registered through its entry point), so its run-time state
# is kept in each daemon handle's ``state``.


def _runtime(daemon: Daemon) -> MetricsRuntime:
    runtime = daemon.state.get("runtime")
    if runtime is None:
        raise ApiError(503, "metrics_not_started", "the metrics plugin has not started yet")
    return runtime


@hookimpl
def ldp_config_schema() -> type[MetricsSettings]:
    return MetricsSettings


@hookimpl
def ldp_migrations() -> list[Migration]:
    return list(MIGRATIONS)


@hookimpl
async def ldp_startup(daemon: Daemon) -> None:
    runtime = MetricsRuntime.create(daemon)
    await runtime.ledger.load()
    await runtime.server.start()
    daemon.state["runtime"] = runtime
    daemon.log.info("metrics endpoint listening", listen=runtime.server.listen)


@hookimpl
def ldp_register_metrics(daemon: Daemon, registry: CollectorRegistry) -> None:
    runtime = daemon.state["runtime"]
    registry.register(NodeCollector(runtime.poller))
    registry.register(ActivityCollector(runtime.ledger))


@hookimpl
def ldp_background_tasks(daemon: Daemon) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    return [("node-snapshot", daemon.state["runtime"].poller.run)]


@hookimpl
async def ldp_shutdown(daemon: Daemon) -> None:
    runtime = daemon.state.pop("runtime", None)
    if runtime is not None:
        await runtime.server.stop()


@hookimpl
def ldp_health(daemon: Daemon) -> dict[str, Any] | None:
    runtime = daemon.state.get("runtime")
    if runtime is None:
        return None
    snapshot, stats = runtime.poller.snapshot, runtime.poller.stats
    return {
        "ok": True,
        "listen": runtime.server.listen,
        "node_snapshot_ok": stats.up,
        "node_snapshot_age_seconds": round(time.time() - snapshot.taken_at, 3) if snapshot.taken_at else None,
    }


@hookimpl
def ldp_register_routes(daemon: Daemon, router: RouteRegistry) -> None:
    register_routes(daemon, router, lambda: _runtime(daemon))


# ---------------------------------------------------------------- events


@hookimpl
async def ldp_event_batch(daemon: Daemon, events: Sequence[Event]) -> None:
    runtime = daemon.state["runtime"]
    await runtime.ledger.record_run(events)
    poke = False
    for event in events:
        if isinstance(event, ChannelEvent):
            await runtime.ledger.record_channel(event)
            poke = True
        elif isinstance(event, NodeStateEvent) and event.reachable:
            poke = True
    if poke:
        # The node snapshot is refreshed once, whatever number of channel events asked.
        runtime.poller.poke()
