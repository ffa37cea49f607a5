"""invoice_tracker: every invoice of the node in the daemon's own tables.

Fed only by journal events (``ldp_event_batch``: a run of events costs one statement
per table), so invoices created or paid while the daemon was down are recorded once it
catches up. Each state change is kept in a history table. Other plugins read the tables
through :mod:`.records` (the http_api plugin does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lightningd_py.hookspecs import hookimpl

from . import records

if TYPE_CHECKING:
    from lightningd_py.daemon import Daemon
    from lightningd_py.events import Event
    from lightningd_py.store import Migration

__all__ = ["ldp_event_batch", "ldp_migrations", "records"]


@hookimpl
def ldp_migrations() -> list[Migration]:
    return records.migrations()


@hookimpl
async def ldp_event_batch(daemon: Daemon, events: Sequence[Event]) -> None:
    await records.apply_events(daemon.store, events)
