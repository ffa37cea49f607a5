"""webhooks: push the node's events to the merchant's backends, signed, retried, never lost.

Each journal event a configured endpoint subscribed to becomes an outbox row (one per
endpoint, keyed by its webhook-id) in the same batch that moves this plugin's journal
cursor, so a crash can only make an event be handled again, never skipped. Delivery
workers POST the rows with Standard Webhooks signatures and retry on a schedule.
See docs/webhooks.md for the event catalogue and how consumers verify signatures.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lightningd_py.api import hookimpl

from .outbox import MIGRATIONS
from .routes import register_routes
from .service import WebhookService
from .settings import WebhooksSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from lightningd_py.api import (
        Daemon,
        Event,
        Migration,
        RouteRegistry,
    )

__all__ = [
    "WebhookService",
    "WebhooksSettings",
    "ldp_background_tasks",
    "ldp_config_reloaded",
    "ldp_config_schema",
    "ldp_event_batch",
    "ldp_health",
    "ldp_journal_start",
    "ldp_migrations",
    "ldp_register_metrics",
    "ldp_register_routes",
    "ldp_shutdown",
    "ldp_startup",
    "service_for",
]

# The running service of each daemon handle (one per daemon; tests run several).


def service_for(daemon: Daemon) -> WebhookService:
    """The plugin's service for this daemon, created on first use: the http_api plugin
    may ask for routes before this plugin's ``ldp_startup`` ran (its own startup comes
    first); the service only delivers once started."""
    service = daemon.state.get("service")
    if service is None:
        settings = daemon.settings if isinstance(daemon.settings, WebhooksSettings) else WebhooksSettings()
        service = daemon.state["service"] = WebhookService(daemon, settings)
    return service


@hookimpl
def ldp_config_schema() -> type[WebhooksSettings]:
    return WebhooksSettings


@hookimpl
def ldp_migrations() -> list[Migration]:
    return list(MIGRATIONS)


@hookimpl
def ldp_journal_start(daemon: Daemon) -> str:
    # Enabling webhooks on an old database must not push its whole history.
    return "end"


@hookimpl
async def ldp_startup(daemon: Daemon) -> None:
    await service_for(daemon).open()


@hookimpl
def ldp_background_tasks(daemon: Daemon) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    service = daemon.state["service"]
    return [("delivery", service.run), ("prune", service.prune), ("first-sync", service.watch_first_sync)]


@hookimpl
def ldp_config_reloaded(daemon: Daemon) -> None:
    if isinstance(daemon.settings, WebhooksSettings):
        daemon.state["service"].reload(daemon.settings)


@hookimpl
async def ldp_shutdown(daemon: Daemon) -> None:
    service = daemon.state.pop("service", None)
    if service is not None:
        await service.close()


@hookimpl
async def ldp_event_batch(daemon: Daemon, events: Sequence[Event]) -> None:
    await daemon.state["service"].handle_events(events)


@hookimpl
def ldp_register_routes(daemon: Daemon, router: RouteRegistry) -> None:
    register_routes(service_for(daemon), router)


@hookimpl
def ldp_register_metrics(daemon: Daemon, registry: CollectorRegistry) -> None:
    daemon.state["service"].metrics.register(registry)


@hookimpl
def ldp_health(daemon: Daemon) -> Mapping[str, Any] | None:
    service = daemon.state.get("service")
    if service is None:
        return None
    # Endpoint trouble is the receiver's, not the daemon's: reported, never unhealthy.
    return {
        # False until LND first caught up after the plugin was enabled: until then what
        # the daemon learns is the node's history, which is not pushed.
        "live": service.history_until is not None,
        "ok": True,
        "endpoints": {name: w.health() for name, w in service.workers.items()},
    }
