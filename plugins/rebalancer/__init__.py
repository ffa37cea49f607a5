"""rebalancer: keep a routing node's liquidity where it earns, without overspending.

Recommends which channels to rebalance from their balances and routing volume, runs
circular self-payments (manual, one automatic round, or a scheduler) under a rolling
daily fee budget reserved before each attempt, sets fee rates from balances (opt-in),
recommends channel closes and opens (opt-in), and writes every static channel backup
atomically to a file. See docs/rebalancer.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from lightningd_py.hookspecs import hookimpl

from .engine import RebalanceError, Rebalancer, RebalanceResult, RoundResult
from .ledger import MIGRATIONS
from .metrics import RebalancerCollector
from .planner import ChannelAdvice, PlannedRebalance, advise, pair
from .routes import register_routes
from .service import RebalancerService
from .settings import RebalancerSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from lightningd_py.daemon import Daemon
    from lightningd_py.events import BackupEvent, ChannelEvent, ForwardEvent, PaymentEvent
    from lightningd_py.store import Migration
    from lightningd_py.web import RouteRegistry

__all__ = [
    "ChannelAdvice",
    "PlannedRebalance",
    "RebalanceError",
    "RebalanceResult",
    "Rebalancer",
    "RebalancerService",
    "RebalancerSettings",
    "RoundResult",
    "advise",
    "ldp_background_tasks",
    "ldp_backup_event",
    "ldp_channel_event",
    "ldp_config_reloaded",
    "ldp_config_schema",
    "ldp_forward_event",
    "ldp_health",
    "ldp_migrations",
    "ldp_payment_event",
    "ldp_register_metrics",
    "ldp_register_routes",
    "ldp_shutdown",
    "ldp_startup",
    "pair",
    "service_for",
]


def service_for(daemon: Daemon) -> RebalancerService:
    """The plugin's service for this daemon handle (created on first use: the HTTP API
    may ask for routes before this plugin's ``ldp_startup`` ran)."""
    service = daemon.state.get("service")
    if service is None:
        service = daemon.state["service"] = RebalancerService(daemon)
    return service


@hookimpl
def ldp_config_schema() -> type[RebalancerSettings]:
    return RebalancerSettings


@hookimpl
def ldp_migrations() -> list[Migration]:
    return list(MIGRATIONS)


@hookimpl
async def ldp_startup(daemon: Daemon) -> None:
    await service_for(daemon).open()


@hookimpl
def ldp_background_tasks(daemon: Daemon) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    service = service_for(daemon)
    return [("scheduler", service.run_scheduler), ("budget", service.refresh_budget)]


@hookimpl
def ldp_config_reloaded(daemon: Daemon) -> None:
    if isinstance(daemon.settings, RebalancerSettings):
        service_for(daemon).apply(daemon.settings)


@hookimpl
def ldp_shutdown(daemon: Daemon) -> None:
    daemon.state.pop("service", None)


@hookimpl
async def ldp_forward_event(daemon: Daemon, event: ForwardEvent) -> None:
    await service_for(daemon).on_forward(event)


@hookimpl
async def ldp_channel_event(daemon: Daemon, event: ChannelEvent) -> None:
    await service_for(daemon).on_channel(event)


@hookimpl
async def ldp_payment_event(daemon: Daemon, event: PaymentEvent) -> None:
    await service_for(daemon).on_payment(event)


@hookimpl
async def ldp_backup_event(daemon: Daemon, event: BackupEvent) -> None:
    await service_for(daemon).on_backup(event)


@hookimpl
def ldp_register_routes(daemon: Daemon, router: RouteRegistry) -> None:
    register_routes(service_for(daemon), router)


@hookimpl
def ldp_register_metrics(daemon: Daemon, registry: CollectorRegistry) -> None:
    registry.register(RebalancerCollector(service_for(daemon).snapshot))


@hookimpl
def ldp_health(daemon: Daemon) -> Mapping[str, Any] | None:
    service = daemon.state.get("service")
    return service.health() if service is not None else None
