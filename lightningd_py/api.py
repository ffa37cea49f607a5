"""The public plugin API: everything a plugin imports comes from this module.

Names here are stable within a major ``API_VERSION``: a minor version adds names and
never removes or changes one. A plugin states the version it needs at import time::

    from lightningd_py import api

    api.require("1.0")

and a daemon too old for it refuses to load the plugin with a message naming both
versions (the plugin then counts as failed to load; ``[core] plugin_failure`` decides
whether the daemon starts without it).
"""

from __future__ import annotations

import inspect

from . import API_VERSION, events
from .config import PluginSettings
from .daemon import Daemon, NodeStatus
from .errors import ConfigError, LdpError, LndError, PluginError, StoreError
from .events import (
    BackupEvent,
    ChannelActive,
    ChannelBackupUpdated,
    ChannelClosed,
    ChannelEvent,
    ChannelInactive,
    ChannelOpened,
    ChannelPendingOpen,
    CustomEvent,
    Event,
    ForwardEvent,
    ForwardFailed,
    ForwardSettled,
    InvoiceAccepted,
    InvoiceCanceled,
    InvoiceCreated,
    InvoiceEvent,
    InvoiceExpired,
    InvoiceSettled,
    NodeStateChanged,
    NodeStateEvent,
    PaymentEvent,
    PaymentFailed,
    PaymentSucceeded,
    PeerEvent,
    PeerOffline,
    PeerOnline,
    RebalanceEvent,
    RebalanceFailed,
    RebalanceSucceeded,
)
from .hookspecs import hookimpl
from .lnd import types as lnd_types
from .store import Migration, StoreHandle
from .web import ApiError, ApiRequest, RouteRegistry

__all__ = [
    "API_VERSION",
    "ApiError",
    "ApiRequest",
    "BackupEvent",
    "ChannelActive",
    "ChannelBackupUpdated",
    "ChannelClosed",
    "ChannelEvent",
    "ChannelInactive",
    "ChannelOpened",
    "ChannelPendingOpen",
    "ConfigError",
    "CustomEvent",
    "Daemon",
    "Event",
    "ForwardEvent",
    "ForwardFailed",
    "ForwardSettled",
    "InvoiceAccepted",
    "InvoiceCanceled",
    "InvoiceCreated",
    "InvoiceEvent",
    "InvoiceExpired",
    "InvoiceSettled",
    "LdpError",
    "LndError",
    "Migration",
    "NodeStateChanged",
    "NodeStateEvent",
    "NodeStatus",
    "PaymentEvent",
    "PaymentFailed",
    "PaymentSucceeded",
    "PeerEvent",
    "PeerOffline",
    "PeerOnline",
    "PluginError",
    "PluginSettings",
    "RebalanceEvent",
    "RebalanceFailed",
    "RebalanceSucceeded",
    "RouteRegistry",
    "StoreError",
    "StoreHandle",
    "events",
    "hookimpl",
    "lnd_types",
    "require",
]


def _parse(version: str) -> tuple[int, int]:
    parts = version.strip().split(".")
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"API version must look like '1' or '1.0', got {version!r}")
    return int(parts[0]), int(parts[1]) if len(parts) == 2 else 0


def require(version: str) -> None:
    """Refuse to load the calling plugin unless this daemon offers plugin API ``version``.

    The daemon offers ``major.minor`` when its major version is the same and its minor
    version is at least as high.

    :raises PluginError: naming the plugin module, the version it needs and the one
        this daemon offers.
    """
    need = _parse(version)
    if need[0] != API_VERSION[0] or need[1] > API_VERSION[1]:
        frame = inspect.stack()[1]
        module = frame.frame.f_globals.get("__name__", "?")
        have = ".".join(map(str, API_VERSION))
        raise PluginError(
            module,
            f"needs lightningd-py plugin API {version}, this daemon offers {have}",
        )
