"""A test plugin that implements every hook of ``lightningd_py.hookspecs`` and appends
one JSON line per call to the file named by its ``record`` setting, so a test can see
which hooks the daemon called, with what, and in which order."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter

from lightningd_py import api

api.require("1.0")

__all__ = [
    "ProbeSettings",
    "ldp_background_tasks",
    "ldp_backup_event",
    "ldp_channel_event",
    "ldp_config_reloaded",
    "ldp_config_schema",
    "ldp_event",
    "ldp_exchange_rate",
    "ldp_forward_event",
    "ldp_health",
    "ldp_invoice_event",
    "ldp_journal_start",
    "ldp_migrations",
    "ldp_node_state",
    "ldp_payment_event",
    "ldp_peer_event",
    "ldp_register_metrics",
    "ldp_register_routes",
    "ldp_shutdown",
    "ldp_startup",
    "ldp_webhook_payload",
]


class ProbeSettings(api.PluginSettings):
    record: Path
    eur_rate: Decimal = Decimal("40000")
    label: str = "first"


def _record(daemon: api.Daemon, hook: str, **detail: Any) -> None:
    settings = daemon.settings
    assert isinstance(settings, ProbeSettings)
    with settings.record.open("a") as fh:
        fh.write(json.dumps({"hook": hook, **detail}, default=str) + "\n")


# ---------------------------------------------------------------- lifecycle


@api.hookimpl
def ldp_config_schema() -> type[ProbeSettings]:
    return ProbeSettings


@api.hookimpl
def ldp_migrations() -> Sequence[api.Migration]:
    return [api.Migration(version=1, sql="CREATE TABLE probe_events (id INTEGER PRIMARY KEY, type TEXT)")]


@api.hookimpl
def ldp_journal_start(daemon: api.Daemon) -> str:
    _record(daemon, "ldp_journal_start")
    return "beginning"


@api.hookimpl
async def ldp_startup(daemon: api.Daemon) -> None:
    _record(daemon, "ldp_startup", settings=type(daemon.settings).__name__)


@api.hookimpl
def ldp_background_tasks(daemon: api.Daemon) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    async def idle() -> None:
        _record(daemon, "ldp_background_tasks", service="idle")
        await anyio.sleep_forever()

    return [("idle", idle)]


@api.hookimpl
def ldp_config_reloaded(daemon: api.Daemon) -> None:
    settings = daemon.settings
    assert isinstance(settings, ProbeSettings)
    _record(daemon, "ldp_config_reloaded", label=settings.label)


@api.hookimpl
async def ldp_shutdown(daemon: api.Daemon) -> None:
    _record(daemon, "ldp_shutdown")


# ---------------------------------------------------------------- events


async def _event(daemon: api.Daemon, hook: str, event: api.Event) -> None:
    await daemon.store.execute(
        "INSERT OR IGNORE INTO probe_events (id, type) VALUES (?, ?)", (event.id, event.type)
    )
    _record(daemon, hook, type=event.type, id=event.id)


@api.hookimpl
async def ldp_invoice_event(daemon: api.Daemon, event: api.InvoiceEvent) -> None:
    await _event(daemon, "ldp_invoice_event", event)
    if isinstance(event, api.InvoiceSettled):
        await daemon.emit(api.CustomEvent(name="probe.settled_seen", key=event.payment_hash))


@api.hookimpl
async def ldp_payment_event(daemon: api.Daemon, event: api.PaymentEvent) -> None:
    await _event(daemon, "ldp_payment_event", event)


@api.hookimpl
async def ldp_channel_event(daemon: api.Daemon, event: api.ChannelEvent) -> None:
    await _event(daemon, "ldp_channel_event", event)


@api.hookimpl
def ldp_forward_event(daemon: api.Daemon, event: api.ForwardEvent) -> None:
    # Synchronous on purpose: event hooks may be plain functions too.
    _record(daemon, "ldp_forward_event", type=event.type, id=event.id)


@api.hookimpl
async def ldp_peer_event(daemon: api.Daemon, event: api.PeerEvent) -> None:
    await _event(daemon, "ldp_peer_event", event)


@api.hookimpl
async def ldp_backup_event(daemon: api.Daemon, event: api.BackupEvent) -> None:
    await _event(daemon, "ldp_backup_event", event)


@api.hookimpl
async def ldp_node_state(daemon: api.Daemon, event: api.NodeStateEvent) -> None:
    await _event(daemon, "ldp_node_state", event)


@api.hookimpl
async def ldp_event(daemon: api.Daemon, event: api.Event) -> None:
    detail = {"source": event.source, "name": event.name} if isinstance(event, api.CustomEvent) else {}
    await _event(daemon, "ldp_event", event)
    _record(daemon, "ldp_event_detail", type=event.type, **detail)


# ---------------------------------------------------------------- extension points


@api.hookimpl
def ldp_register_routes(daemon: api.Daemon, router: api.RouteRegistry) -> None:
    async def seen(request: api.ApiRequest) -> dict[str, Any]:
        rows = await daemon.store.fetchall("SELECT type, COUNT(*) AS n FROM probe_events GROUP BY type")
        return {"events": {row["type"]: row["n"] for row in rows}}

    router.add("GET", "/v1/probe/events", seen, role="readonly", summary="Events the probe saw")
    _record(daemon, "ldp_register_routes")


@api.hookimpl
def ldp_register_metrics(daemon: api.Daemon, registry: CollectorRegistry) -> None:
    counter = Counter("probe_started", "Times the probe plugin started", registry=registry)
    counter.inc()
    _record(daemon, "ldp_register_metrics")


@api.hookimpl
async def ldp_exchange_rate(daemon: api.Daemon, currency: str) -> Decimal | None:
    _record(daemon, "ldp_exchange_rate", currency=currency)
    settings = daemon.settings
    assert isinstance(settings, ProbeSettings)
    return settings.eur_rate if currency == "EUR" else None


@api.hookimpl
def ldp_webhook_payload(
    daemon: api.Daemon, event: api.Event, payload: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    _record(daemon, "ldp_webhook_payload", type=event.type)
    if isinstance(event, api.InvoiceSettled):
        return {"probe": True, "payment_hash": event.payment_hash}
    return None


@api.hookimpl
def ldp_health(daemon: api.Daemon) -> Mapping[str, Any]:
    return {"ok": True, "probe": "alive"}
