"""The handle each plugin gets on the daemon: the only way a plugin reaches LND, the
database, the journal, the config and the metrics registry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from .events import CustomEvent, Event

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from pydantic import BaseModel

    from .config import Config
    from .journal import Journal
    from .lnd.client import LndClient
    from .pluginhost import HookRunner, PluginHost
    from .store import StoreHandle

__all__ = ["Daemon", "NodeStatus"]


@dataclass(slots=True)
class NodeStatus:
    """What the daemon knows of LND right now (updated by the LND link).

    :ivar state: LND's WalletState name, ``"UNREACHABLE"`` or ``"CONNECTING"``.
    :ivar reachable: LND answered its State service.
    :ivar active: LND is SERVER_ACTIVE and the streams are subscribed.
    :ivar detail: a human sentence for logs, health and sd_notify STATUS.
    :ivar since: unix time of the last change.
    :ivar reconnects: how many times the link reconnected.
    """

    state: str = "CONNECTING"
    reachable: bool = False
    active: bool = False
    synced_to_chain: bool = False
    detail: str = "connecting to LND"
    since: float = 0.0
    reconnects: int = 0
    pubkey: str = ""
    alias: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Daemon:
    """One plugin's view of the daemon.

    :ivar name: the plugin's name (its entry-point name).
    :ivar settings: the plugin's validated ``[plugins.NAME]`` table (its own pydantic model)
        or None when it declares no schema.
    :ivar config: the whole validated configuration (read-only).
    :ivar lnd: typed calls to LND; raise ``LndError`` (``kind="unreachable"`` while LND is
        down or locked).
    :ivar store: this plugin's handle on the database (see ``Store``).
    :ivar journal: read access to the event journal (``read``, ``wait``, ``last_id``).
    :ivar registry: the daemon's Prometheus registry.
    :ivar node: what the daemon knows of LND right now.
    :ivar log: a structlog logger bound with ``plugin=<name>``.
    :ivar state_dir: the directory the daemon keeps its state in.
    :ivar state: the plugin's own objects for this daemon (a service it starts in
        ``ldp_startup``, say), kept between hook calls; empty at start, one per plugin.
    """

    def __init__(
        self,
        *,
        name: str,
        host: PluginHost,
        settings: BaseModel | None,
    ) -> None:
        self.name = name
        self._host = host
        self.settings = settings
        self._store = host.store_for(name)
        self.log = structlog.get_logger("lightningd_py").bind(plugin=name)
        self.state: dict[str, Any] = {}

    # Properties read through the host so a config reload is seen everywhere at once.
    @property
    def config(self) -> Config:
        return self._host.config

    @property
    def lnd(self) -> LndClient:
        return self._host.lnd

    @property
    def store(self) -> StoreHandle:
        return self._store

    @property
    def journal(self) -> Journal:
        return self._host.journal

    @property
    def registry(self) -> CollectorRegistry:
        return self._host.registry

    @property
    def node(self) -> NodeStatus:
        return self._host.node

    @property
    def state_dir(self) -> Path:
        return self._host.config.core.state_dir

    @property
    def hooks(self) -> HookRunner:
        """Call hooks of every plugin: ``await hooks.first(name, **kw)`` (decisions) and
        ``await hooks.each(name, **kw)`` (notifications, a list of answers)."""
        return self._host.hooks

    async def emit(self, event: Event) -> int:
        """Journal an event this plugin produced; every plugin then receives it through
        ``ldp_event`` (or the hook of its type). Returns the journal id, or 0 when an
        event with the same dedupe key was journaled before.

        A ``CustomEvent`` gets ``source`` set to this plugin's name.
        """
        if isinstance(event, CustomEvent):
            event = msgspec.structs.replace(event, source=self.name)
        ids = await self._host.journal.append([event])
        return ids[0]

    def status(self) -> Mapping[str, Any]:
        """The daemon's status for health reports: LND link, database, and per-plugin
        journal lag, handled events and hook errors."""
        return self._host.status()
