"""An in-memory picture of the LND node, refreshed by a background service.

Prometheus collectors and the dashboard summary read the latest ``NodeSnapshot``;
nothing on the scrape path ever calls LND. The poller refreshes on a short interval
and at once after a channel event, and keeps peer aliases in a cache that it fills a
few lookups at a time so a node with hundreds of peers never floods LND.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog

from lightningd_py.errors import LndError

if TYPE_CHECKING:
    from lightningd_py.lnd.client import LndClient
    from lightningd_py.lnd.types import Channel, NodeInfo, PendingChannels, WalletBalance

__all__ = ["ChannelState", "NodeSnapshot", "SnapshotPoller", "parse_chan_id", "short_channel_id"]

log = structlog.get_logger("lightningd_py.plugins.metrics")

# Alias lookups per refresh, and how long a known alias is trusted.
ALIAS_LOOKUPS_PER_REFRESH = 25
ALIAS_TTL = 3600.0


def short_channel_id(chan_id: int) -> str:
    """LND's 64-bit channel id as ``BLOCKxTXxOUTPUT``."""
    return f"{chan_id >> 40}x{(chan_id >> 16) & 0xFFFFFF}x{chan_id & 0xFFFF}"


def parse_chan_id(text: str) -> int:
    """A channel id given as LND's integer or as a short channel id ``BLOCKxTXxOUTPUT``.

    :raises ValueError: when ``text`` is neither.
    """
    text = text.strip()
    if "x" in text:
        parts = text.split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError("expected BLOCKxTXxOUTPUT")
        block, tx, out = (int(p) for p in parts)
        if block >= 1 << 24 or tx >= 1 << 24 or out >= 1 << 16:
            raise ValueError("short channel id component out of range")
        return (block << 40) | (tx << 16) | out
    if not text.isdigit():
        raise ValueError("expected an integer channel id or BLOCKxTXxOUTPUT")
    value = int(text)
    if value >= 1 << 64:
        raise ValueError("channel id out of range")
    return value


@dataclass(frozen=True, slots=True)
class ChannelState:
    """One open channel as LND last reported it."""

    chan_id: int
    channel_point: str
    peer_pubkey: str
    peer_alias: str
    capacity_sat: int
    local_balance_sat: int
    remote_balance_sat: int
    active: bool
    private: bool
    pending_htlcs: int

    @property
    def scid(self) -> str:
        return short_channel_id(self.chan_id)

    @property
    def balance_ratio(self) -> float:
        """Local share of the spendable balance, 0..1 (0.5 when both sides are empty)."""
        both = self.local_balance_sat + self.remote_balance_sat
        return self.local_balance_sat / both if both else 0.5


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """The node at ``taken_at`` (unix seconds; 0 when LND was never reached)."""

    taken_at: float = 0.0
    version: str = ""
    alias: str = ""
    pubkey: str = ""
    network: str = ""
    block_height: int = 0
    synced_to_chain: bool = False
    synced_to_graph: bool = False
    peers: int = 0
    pending_channels: int = 0
    channels: tuple[ChannelState, ...] = ()
    wallet_confirmed_sat: int = 0
    wallet_unconfirmed_sat: int = 0
    wallet_locked_sat: int = 0

    @property
    def active_channels(self) -> int:
        return sum(1 for c in self.channels if c.active)

    @property
    def inactive_channels(self) -> int:
        return len(self.channels) - self.active_channels

    @property
    def local_balance_sat(self) -> int:
        return sum(c.local_balance_sat for c in self.channels)

    @property
    def remote_balance_sat(self) -> int:
        return sum(c.remote_balance_sat for c in self.channels)

    @property
    def capacity_sat(self) -> int:
        return sum(c.capacity_sat for c in self.channels)


@dataclass(slots=True)
class PollerStats:
    """What the poller has done (exported as metrics)."""

    refreshes: int = 0
    failures: int = 0
    last_attempt: float = 0.0
    last_error: str = ""
    last_duration: float = 0.0
    up: bool = False


@dataclass(slots=True)
class _Alias:
    alias: str
    fetched: float


class SnapshotPoller:
    """Keeps ``snapshot`` fresh.

    :param lnd: a zero-argument callable returning the LND client, or None while the link
        is not active (LND down, locked or starting: nothing is asked of it then).
    :param interval: a zero-argument callable returning the refresh interval in seconds.
    :param on_refresh: awaited with each new snapshot (the plugin samples balances there).
    """

    def __init__(
        self,
        lnd: Callable[[], LndClient | None],
        interval: Callable[[], float],
        on_refresh: Callable[[NodeSnapshot], Awaitable[None]] | None = None,
    ) -> None:
        self._lnd = lnd
        self._interval = interval
        self.on_refresh = on_refresh
        self._wake = anyio.Event()
        self._aliases: dict[str, _Alias] = {}
        self.snapshot = NodeSnapshot()
        self.stats = PollerStats()

    def poke(self) -> None:
        """Refresh as soon as possible (after a channel event, or LND becoming active)."""
        self._wake.set()

    async def run(self) -> None:
        """The service: refresh, then sleep for the interval or until poked."""
        while True:
            await self.refresh()
            with anyio.move_on_after(max(0.1, self._interval())):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def refresh(self) -> None:
        """Take a new snapshot; on failure keep the last one and count the failure."""
        lnd = self._lnd()
        if lnd is None:
            self.stats.up = False
            self.stats.last_error = "LND is not active"
            return
        started = time.perf_counter()
        self.stats.last_attempt = time.time()
        try:
            info = await lnd.get_info()
            channels = await lnd.list_channels()
            pending = await lnd.pending_channels()
            wallet = await lnd.wallet_balance()
            await self._fill_aliases(lnd, [c.remote_pubkey for c in channels if not c.peer_alias])
        except LndError as exc:
            self.stats.failures += 1
            self.stats.up = False
            self.stats.last_error = str(exc)
            self.stats.last_duration = time.perf_counter() - started
            log.debug("node snapshot failed", error=str(exc))
            return
        self.snapshot = self._build(info, channels, pending, wallet)
        self.stats.refreshes += 1
        self.stats.up = True
        self.stats.last_error = ""
        self.stats.last_duration = time.perf_counter() - started
        if self.on_refresh is not None:
            await self.on_refresh(self.snapshot)

    async def _fill_aliases(self, lnd: LndClient, pubkeys: Sequence[str]) -> None:
        now = time.time()
        missing = [
            pk
            for pk in dict.fromkeys(pubkeys)
            if pk not in self._aliases or now - self._aliases[pk].fetched > ALIAS_TTL
        ]
        for pubkey in missing[:ALIAS_LOOKUPS_PER_REFRESH]:
            try:
                info = await lnd.get_node_info(pubkey)
            except LndError as exc:
                if exc.kind != "not_found":
                    raise
                # A peer not (yet) in the graph has no alias; ask again after the TTL.
                self._aliases[pubkey] = _Alias("", now)
                continue
            self._aliases[pubkey] = _Alias(info.alias, now)

    def _cached_alias(self, pubkey: str) -> str:
        known = self._aliases.get(pubkey)
        return known.alias if known is not None else ""

    def _build(
        self, info: NodeInfo, channels: list[Channel], pending: PendingChannels, wallet: WalletBalance
    ) -> NodeSnapshot:
        states = tuple(
            ChannelState(
                chan_id=ch.chan_id,
                channel_point=ch.channel_point,
                peer_pubkey=ch.remote_pubkey,
                peer_alias=ch.peer_alias or self._cached_alias(ch.remote_pubkey),
                capacity_sat=ch.capacity_sat,
                local_balance_sat=ch.local_balance_sat,
                remote_balance_sat=ch.remote_balance_sat,
                active=ch.active,
                private=ch.private,
                pending_htlcs=ch.num_pending_htlcs,
            )
            for ch in channels
        )
        return NodeSnapshot(
            taken_at=time.time(),
            version=info.version,
            alias=info.alias,
            pubkey=info.pubkey,
            network=info.network,
            block_height=info.block_height,
            synced_to_chain=info.synced_to_chain,
            synced_to_graph=info.synced_to_graph,
            peers=info.num_peers,
            pending_channels=_count_pending(pending),
            channels=states,
            wallet_confirmed_sat=wallet.confirmed_balance_sat,
            wallet_unconfirmed_sat=wallet.unconfirmed_balance_sat,
            wallet_locked_sat=wallet.locked_balance_sat,
        )


def _count_pending(pending: PendingChannels) -> int:
    return len(pending.pending_open) + len(pending.waiting_close) + len(pending.force_closing)
