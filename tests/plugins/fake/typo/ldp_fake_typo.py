"""A plugin with a misspelled hook name (``ldp_invoce_event``)."""

from __future__ import annotations

from lightningd_py import api

api.require("1.0")

__all__ = ["ldp_invoce_event"]


@api.hookimpl
async def ldp_invoce_event(daemon: api.Daemon, event: api.InvoiceEvent) -> None:
    daemon.log.info("never called", event_id=event.id)
