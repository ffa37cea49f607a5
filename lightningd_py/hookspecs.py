"""The hook contract between the daemon and its plugins.

Two kinds of hook:

* notifications (lifecycle and event hooks) fan out to every enabled plugin; each
  plugin's implementation is called on its own, an exception in one is logged with the
  plugin's name, counted, and never reaches the others;
* decisions (``ldp_exchange_rate``, ``ldp_webhook_payload``) take the first non-None
  answer, in plugin registration order, after awaiting it; an implementation that raises
  is logged and skipped, and the next one is asked.

Every hook may be written as ``async def`` unless its docstring says otherwise: the
daemon calls each implementation itself and awaits what is awaitable. Plugins write
``from lightningd_py.api import hookimpl``.

Event hooks are called by the plugin's own worker task, in journal order, at least
once per event (after a crash, events after the plugin's durable cursor are delivered
again), with ``event.id`` stable across deliveries: make them idempotent. A hook that
raises is retried with backoff before the worker moves on (see ``[core]``
``hook_max_attempts``); a slow hook delays only its own plugin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from pydantic import BaseModel

    from .daemon import Daemon
    from .events import (
        BackupEvent,
        ChannelEvent,
        Event,
        ForwardEvent,
        InvoiceEvent,
        NodeStateEvent,
        PaymentEvent,
        PeerEvent,
    )
    from .store import Migration
    from .web import RouteRegistry

__all__ = ["hookimpl", "hookspec"]

hookspec = HookspecMarker("lightningd_py")
hookimpl = HookimplMarker("lightningd_py")


# ---------------------------------------------------------------- lifecycle


@hookspec
def ldp_config_schema() -> type[BaseModel] | None:
    """Declare the schema of this plugin's ``[plugins.NAME]`` config table.

    Called once, synchronously (must not be ``async``), while the config is loaded and
    before anything starts.

    :return: a pydantic model class (subclass ``lightningd_py.api.PluginSettings``, which
        forbids unknown keys). The daemon validates the plugin's table with it, reports
        errors with the full key path, and hands the instance to the plugin as
        ``daemon.settings``. None if the plugin takes no settings (then any key other
        than ``enabled`` in its table is an error).
    """


@hookspec
def ldp_migrations() -> Sequence[Migration] | None:
    """Declare the database migrations of the tables this plugin owns.

    Called once, synchronously (must not be ``async``), after the database is opened and
    before ``ldp_startup``. Migrations are applied in version order, each in its own
    transaction, and recorded per plugin, so each runs exactly once per database.

    :return: a sequence of ``lightningd_py.api.Migration(version, sql)``; versions
        start at 1 and never change once released.
    """


@hookspec
def ldp_journal_start(daemon: Daemon) -> str | None:
    """Decide where a plugin that has never run reads the journal from.

    Called once, synchronously, the first time the plugin is enabled on a database (it
    has no durable cursor yet). Later starts resume from the cursor.

    :param daemon: this plugin's handle on the daemon.
    :return: ``"beginning"`` to receive every journaled event (the default, for
        plugins that build their own record of history), or ``"end"`` to receive only
        events journaled from now on (e.g. notifications that must not replay history).
    """


@hookspec
def ldp_startup(daemon: Daemon) -> None:
    """The plugin starts.

    Called once on the supervisor task after migrations and before the journal workers
    start, in plugin order; the daemon reports READY only after every plugin's startup
    returned. Open resources here (HTTP servers, client sessions). An exception here is
    a plugin start failure, handled as ``[core] plugin_failure`` says ("refuse" stops
    the daemon, "skip" disables the plugin).

    :param daemon: this plugin's handle on the daemon.
    """


@hookspec
def ldp_background_tasks(daemon: Daemon) -> Iterable[tuple[str, Callable[[], Awaitable[None]]]] | None:
    """Long-running services of the plugin.

    Called once, synchronously, after ``ldp_startup``. Each returned pair is a name and a
    zero-argument coroutine function; the supervisor runs each in its own task and
    cancels it at shutdown. A service that raises is logged with the plugin's and the
    service's names and restarted after a capped exponential backoff. Plugins never
    create tasks themselves.

    :param daemon: this plugin's handle on the daemon.
    :return: an iterable of ``(name, coroutine_function)``.
    """


@hookspec
def ldp_config_reloaded(daemon: Daemon) -> None:
    """The config was reloaded (SIGHUP) and ``daemon.settings`` now holds the new values.

    Called on the supervisor task, after the new file validated. Settings that cannot
    change at run time (listen addresses, the database path) keep their old values and
    the daemon logs that a restart is needed for them.

    :param daemon: this plugin's handle on the daemon.
    """


@hookspec
def ldp_shutdown(daemon: Daemon) -> None:
    """The daemon is stopping.

    Called once, in reverse plugin order, after the journal workers and background
    tasks were cancelled, under a shielded grace period. Close what ``ldp_startup``
    opened.

    :param daemon: this plugin's handle on the daemon.
    """


# ---------------------------------------------------------------- events (notifications)


@hookspec
def ldp_invoice_event(daemon: Daemon, event: InvoiceEvent) -> None:
    """An invoice of the node was created, accepted, settled, canceled or expired.

    :param daemon: this plugin's handle on the daemon.
    :param event: one of ``InvoiceCreated``, ``InvoiceAccepted``, ``InvoiceSettled``,
        ``InvoiceCanceled``, ``InvoiceExpired``.
    """


@hookspec
def ldp_payment_event(daemon: Daemon, event: PaymentEvent) -> None:
    """An outgoing payment succeeded or failed.

    :param daemon: this plugin's handle on the daemon.
    :param event: ``PaymentSucceeded`` or ``PaymentFailed``.
    """


@hookspec
def ldp_channel_event(daemon: Daemon, event: ChannelEvent) -> None:
    """A channel became pending, opened, closed, active or inactive.

    :param daemon: this plugin's handle on the daemon.
    :param event: ``ChannelPendingOpen``, ``ChannelOpened``, ``ChannelClosed``,
        ``ChannelActive`` or ``ChannelInactive``.
    """


@hookspec
def ldp_forward_event(daemon: Daemon, event: ForwardEvent) -> None:
    """A forwarded HTLC settled or failed.

    :param daemon: this plugin's handle on the daemon.
    :param event: ``ForwardSettled`` or ``ForwardFailed``.
    """


@hookspec
def ldp_peer_event(daemon: Daemon, event: PeerEvent) -> None:
    """A peer connected or disconnected.

    :param daemon: this plugin's handle on the daemon.
    :param event: ``PeerOnline`` or ``PeerOffline``.
    """


@hookspec
def ldp_backup_event(daemon: Daemon, event: BackupEvent) -> None:
    """LND published a new multi-channel static backup.

    :param daemon: this plugin's handle on the daemon.
    :param event: ``ChannelBackupUpdated``.
    """


@hookspec
def ldp_node_state(daemon: Daemon, event: NodeStateEvent) -> None:
    """LND became unreachable, reachable, locked, or its state changed otherwise.

    :param daemon: this plugin's handle on the daemon.
    :param event: ``NodeStateChanged``.
    """


@hookspec
def ldp_event(daemon: Daemon, event: Event) -> None:
    """An event a plugin emitted with ``daemon.emit`` (``RebalanceSucceeded``,
    ``RebalanceFailed``, ``CustomEvent``).

    :param daemon: this plugin's handle on the daemon.
    :param event: the emitted event, with its journal id.
    """


@hookspec
def ldp_event_batch(daemon: Daemon, events: Sequence[Event]) -> None:
    """A run of consecutive journal events, for plugins that write in bulk.

    A plugin that implements this hook receives every journal event through it, of
    every type, in journal order, and none through the per-type event hooks above. A run
    is what the plugin's worker read in one go: up to ``[core] journal_batch`` events,
    more than one only when events arrive faster than the plugin handles them. Writes
    queued on ``daemon.store`` while handling a run commit before the plugin's cursor
    moves past the run's last event, so one ``executemany`` per table per run is safe.

    A run that raises is handed over again one event at a time (each as a run of one),
    with the usual retries and backoff, so one bad event is retried and dead-lettered on
    its own while the others go through; the events of the failed run before it are
    therefore delivered twice, which idempotent writes absorb. The hook timeout
    (``[core] hook_timeout``) applies to each call.

    :param daemon: this plugin's handle on the daemon.
    :param events: the run, oldest first, each with its journal id.
    """


# ---------------------------------------------------------------- extension points


@hookspec
def ldp_register_routes(daemon: Daemon, router: RouteRegistry) -> None:
    """Add HTTP endpoints to the API.

    Called once by the http_api plugin during its startup, synchronously (must not be
    ``async``). The API plugin starts last, but a plugin whose startup failed under
    ``plugin_failure = "skip"`` is not asked; handlers must not assume state that only
    ``ldp_startup`` creates unless they create it on first use. Routes added here get the
    API's authentication, roles, rate limits, error format and OpenAPI documentation.

    :param daemon: this plugin's handle on the daemon.
    :param router: the API's route registry; see ``lightningd_py.web.RouteRegistry.add``.
    """


@hookspec
def ldp_register_metrics(daemon: Daemon, registry: CollectorRegistry) -> None:
    """Register Prometheus collectors in the daemon's registry.

    Called once, synchronously, after ``ldp_startup``. Collectors must answer from
    memory: never call LND or the database inside ``collect()``.

    :param daemon: this plugin's handle on the daemon.
    :param registry: the daemon's own ``CollectorRegistry`` (also ``daemon.registry``).
    """


@hookspec
def ldp_exchange_rate(daemon: Daemon, currency: str) -> Decimal | None:
    """Decision: the price of one bitcoin in ``currency``.

    The first non-None answer wins; an implementation that raises is logged and skipped.
    Falls back to the configured rate provider when every plugin answers None.

    :param daemon: this plugin's handle on the daemon.
    :param currency: an ISO 4217 code in upper case, e.g. ``"EUR"``.
    :return: the price of 1 BTC as a Decimal, or None to let others answer.
    """


@hookspec
def ldp_webhook_payload(daemon: Daemon, event: Event, payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Decision: the ``data`` object sent in a webhook for ``event``.

    The first non-None answer replaces the default payload; an implementation that
    raises is logged and skipped, and the default payload is sent.

    :param daemon: this plugin's handle on the daemon.
    :param event: the journaled event being delivered.
    :param payload: the default ``data`` object the webhooks plugin built.
    :return: a JSON-serializable mapping, or None to keep the default.
    """


@hookspec
def ldp_health(daemon: Daemon) -> Mapping[str, Any] | None:
    """Contribute to the health report (``GET /v1/health``).

    Called on each health request; must be cheap (answer from memory).

    :param daemon: this plugin's handle on the daemon.
    :return: a mapping merged into the report under the plugin's name, with an ``ok``
        boolean that counts towards overall health; None to contribute nothing.
    """
