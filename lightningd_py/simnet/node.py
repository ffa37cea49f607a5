"""The simulated node's state: identity, wallet, chain, peers, channels, forwards and streams.

Everything lives in memory inside one Simnet object, so an in-process "restart" keeps it all,
like LND keeping its database across a restart. Amounts are kept in msat internally and reported
in LND's units (sat for channel balances, msat where LND has msat fields).
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from dataclasses import dataclass, field

import coincurve

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2
from lightningd_py.lnd.rpc import stateservice_pb2 as st
from lightningd_py.simnet import bolt11
from lightningd_py.simnet.hub import Hub
from lightningd_py.simnet.invoices import InvoiceRegistry

__all__ = ["ForwardRecord", "NodeModel", "Peer", "SimChannel", "make_scid", "split_scid"]

_ALIASES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory")
REGTEST_GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"


def make_scid(height: int, tx_index: int, output: int) -> int:
    """Short channel id: block height (3 bytes) | tx index (3 bytes) | output index (2 bytes)."""
    return (height << 40) | (tx_index << 16) | output


def split_scid(scid: int) -> tuple[int, int, int]:
    return scid >> 40, (scid >> 16) & 0xFFFFFF, scid & 0xFFFF


@dataclass(slots=True)
class Peer:
    key: coincurve.PrivateKey
    alias: str
    address: str
    online: bool = True
    inbound: bool = False

    @property
    def pubkey(self) -> str:
        return self.key.public_key.format().hex()


@dataclass(slots=True)
class SimChannel:
    """One channel; `status` is pending_open, open, waiting_close, pending_force_close or closed."""

    chan_id: int
    funding_txid: bytes  # internal byte order (as in ChannelPoint.funding_txid_bytes)
    output_index: int
    remote_pubkey: str
    capacity_sat: int
    local_msat: int
    remote_msat: int
    initiator: bool = True
    private: bool = False
    active: bool = True
    status: str = "open"
    base_fee_msat: int = 1000
    fee_rate_ppm: int = 1
    time_lock_delta: int = 80
    min_htlc_msat: int = 1000
    max_htlc_msat: int = 0
    remote_base_fee_msat: int = 1000
    remote_fee_rate_ppm: int = 1
    remote_time_lock_delta: int = 40
    push_sat: int = 0
    sent_msat: int = 0
    received_msat: int = 0
    num_updates: int = 0
    confirmations_needed: int = 0
    opened_at: float = field(default_factory=time.time)
    closing_txid: bytes = b""
    close_type: int = 0
    close_height: int = 0
    close_initiator: int = 0
    policy_updated: int = field(default_factory=lambda: int(time.time()))
    htlc_counter: int = 0

    @property
    def txid_str(self) -> str:
        return self.funding_txid[::-1].hex()

    @property
    def channel_point(self) -> str:
        return f"{self.txid_str}:{self.output_index}"

    def point_proto(self) -> ln.ChannelPoint:
        return ln.ChannelPoint(funding_txid_bytes=self.funding_txid, output_index=self.output_index)

    def next_htlc_id(self) -> int:
        hid = self.htlc_counter
        self.htlc_counter += 1
        return hid

    def fee_for(self, amt_msat: int) -> int:
        """Fee the peer charges to forward amt_msat to us over this channel (its policy)."""
        return self.remote_base_fee_msat + amt_msat * self.remote_fee_rate_ppm // 1_000_000

    def to_proto(self, peer_alias: str = "") -> ln.Channel:
        reserve = max(self.capacity_sat // 100, 354)
        constraints = ln.ChannelConstraints(
            csv_delay=144,
            chan_reserve_sat=reserve,
            dust_limit_sat=354,
            max_pending_amt_msat=self.capacity_sat * 1000 * 99 // 100,
            min_htlc_msat=self.min_htlc_msat,
            max_accepted_htlcs=483,
        )
        return ln.Channel(
            active=self.active,
            remote_pubkey=self.remote_pubkey,
            channel_point=self.channel_point,
            chan_id=self.chan_id,
            capacity=self.capacity_sat,
            local_balance=self.local_msat // 1000,
            remote_balance=self.remote_msat // 1000,
            total_satoshis_sent=self.sent_msat // 1000,
            total_satoshis_received=self.received_msat // 1000,
            num_updates=self.num_updates,
            csv_delay=144,
            private=self.private,
            initiator=self.initiator,
            chan_status_flags="ChanStatusDefault",
            local_chan_reserve_sat=reserve,
            remote_chan_reserve_sat=reserve,
            static_remote_key=True,
            commitment_type=ln.ANCHORS,
            lifetime=int(time.time() - self.opened_at),
            uptime=int(time.time() - self.opened_at) if self.active else 0,
            push_amount_sat=self.push_sat,
            local_constraints=constraints,
            remote_constraints=constraints,
            peer_alias=peer_alias,
        )

    def pending_proto(self) -> ln.PendingChannelsResponse.PendingChannel:
        reserve = max(self.capacity_sat // 100, 354)
        return ln.PendingChannelsResponse.PendingChannel(
            remote_node_pub=self.remote_pubkey,
            channel_point=self.channel_point,
            capacity=self.capacity_sat,
            local_balance=self.local_msat // 1000,
            remote_balance=self.remote_msat // 1000,
            local_chan_reserve_sat=reserve,
            remote_chan_reserve_sat=reserve,
            initiator=ln.INITIATOR_LOCAL if self.initiator else ln.INITIATOR_REMOTE,
            commitment_type=ln.ANCHORS,
            private=self.private,
        )

    def close_summary(self, chain_hash: str) -> ln.ChannelCloseSummary:
        settled = self.local_msat // 1000
        return ln.ChannelCloseSummary(
            channel_point=self.channel_point,
            chan_id=self.chan_id,
            chain_hash=chain_hash,
            closing_tx_hash=self.closing_txid[::-1].hex(),
            remote_pubkey=self.remote_pubkey,
            capacity=self.capacity_sat,
            close_height=self.close_height,
            settled_balance=settled,
            close_type=self.close_type,
            open_initiator=ln.INITIATOR_LOCAL if self.initiator else ln.INITIATOR_REMOTE,
            close_initiator=self.close_initiator,
        )


@dataclass(slots=True)
class ForwardRecord:
    timestamp_ns: int
    chan_id_in: int
    chan_id_out: int
    amt_in_msat: int
    amt_out_msat: int

    def to_proto(self, alias_in: str = "", alias_out: str = "") -> ln.ForwardingEvent:
        fee = self.amt_in_msat - self.amt_out_msat
        return ln.ForwardingEvent(
            timestamp=self.timestamp_ns // 1_000_000_000,
            chan_id_in=self.chan_id_in,
            chan_id_out=self.chan_id_out,
            amt_in=self.amt_in_msat // 1000,
            amt_out=self.amt_out_msat // 1000,
            fee=fee // 1000,
            fee_msat=fee,
            amt_in_msat=self.amt_in_msat,
            amt_out_msat=self.amt_out_msat,
            timestamp_ns=self.timestamp_ns,
            peer_alias_in=alias_in,
            peer_alias_out=alias_out,
        )


class NodeModel:
    """The node: identity, chain, wallet, peers, channels, invoices, forwards and event hubs."""

    def __init__(
        self,
        *,
        alias: str = "simnet",
        peers: int = 5,
        channels: int = 10,
        seed: int | None = None,
        block_height: int = 500,
    ) -> None:
        self.rng = random.Random(seed)
        self.key = coincurve.PrivateKey(secrets.token_bytes(32) if seed is None else self._seeded(b"node"))
        self.pubkey = self.key.public_key.format().hex()
        self.alias = alias
        self.network = "regtest"
        self.block_height = block_height
        self.wallet_confirmed_sat = 100_000_000
        self.wallet_unconfirmed_sat = 0
        self.fee_sat_per_vbyte = 25
        self.state: int = st.SERVER_ACTIVE
        self.state_hub: Hub[int] = Hub()
        self.peers: dict[str, Peer] = {}
        self.channels: dict[int, SimChannel] = {}
        self.forwards: list[ForwardRecord] = []
        # Hold-invoice HTLCs paid from outside (control API) and not yet resolved: hash -> (chan, msat).
        self.held_htlcs: dict[bytes, tuple[int, int]] = {}
        self.channel_events: Hub[ln.ChannelEventUpdate] = Hub()
        self.peer_events: Hub[ln.PeerEvent] = Hub()
        self.backup_events: Hub[ln.ChanBackupSnapshot] = Hub()
        self.htlc_events: Hub[router_pb2.HtlcEvent] = Hub()
        self.invoices = InvoiceRegistry(self.key, "bcrt", lambda: self.block_height, self.route_hints)
        self._tx_counter = 0
        for i in range(peers):
            alias_i = _ALIASES[i] if i < len(_ALIASES) else f"peer{i}"
            self.add_peer(alias_i)
        peer_keys = list(self.peers)
        for i in range(channels if peer_keys else 0):
            capacity = self.rng.choice((1_000_000, 2_000_000, 5_000_000, 10_000_000))
            local_share = self.rng.randint(20, 80)
            chan = self.new_channel(
                peer_keys[i % len(peer_keys)], capacity, capacity * local_share // 100, initiator=i % 3 != 2
            )
            chan.status = "open"
            chan.base_fee_msat = self.rng.choice((0, 1000))
            chan.fee_rate_ppm = self.rng.choice((1, 10, 100, 250, 500))
            chan.remote_base_fee_msat = self.rng.choice((0, 1000))
            chan.remote_fee_rate_ppm = self.rng.choice((1, 10, 100, 250))
            self.channels[chan.chan_id] = chan

    def _seeded(self, label: bytes) -> bytes:
        return hashlib.sha256(label + self.rng.getrandbits(64).to_bytes(8, "big")).digest()

    # ---- identity, chain ----------------------------------------------------------
    @property
    def chain_hash(self) -> str:
        return REGTEST_GENESIS

    def block_hash(self, height: int | None = None) -> str:
        h = self.block_height if height is None else height
        return hashlib.sha256(b"simnet-block" + h.to_bytes(8, "big")).digest()[::-1].hex()

    def new_txid(self) -> bytes:
        self._tx_counter += 1
        return hashlib.sha256(b"simnet-tx" + self.key.secret + self._tx_counter.to_bytes(8, "big")).digest()

    def set_state(self, state: int) -> None:
        if state != self.state:
            self.state = state
            self.state_hub.publish(state)

    # ---- peers, channels ----------------------------------------------------------
    def add_peer(self, alias: str, key: coincurve.PrivateKey | None = None) -> Peer:
        key = key or coincurve.PrivateKey(self._seeded(alias.encode()))
        port = 9735 + len(self.peers) + 1
        peer = Peer(key=key, alias=alias, address=f"127.0.0.1:{port}")
        self.peers[peer.pubkey] = peer
        return peer

    def route_hints(self, amt_msat: int) -> tuple[tuple[bolt11.RouteHop, ...], ...]:
        """Hop hints for private channels with the inbound room for `amt_msat` (at most 20, as LND)."""
        hints = []
        for chan in self.channels.values():
            if chan.status == "open" and chan.private and chan.active and chan.remote_msat >= amt_msat:
                hop = bolt11.RouteHop(
                    bytes.fromhex(chan.remote_pubkey),
                    chan.chan_id,
                    chan.remote_base_fee_msat,
                    chan.remote_fee_rate_ppm,
                    chan.remote_time_lock_delta,
                )
                hints.append((hop,))
        return tuple(hints[:20])

    def alias_of(self, pubkey: str) -> str:
        peer = self.peers.get(pubkey)
        return peer.alias if peer else ""

    def new_channel(
        self,
        remote_pubkey: str,
        capacity_sat: int,
        local_sat: int,
        *,
        initiator: bool = True,
        private: bool = False,
    ) -> SimChannel:
        txid = self.new_txid()
        tx_index = self._tx_counter
        scid = make_scid(self.block_height, tx_index, 0)
        return SimChannel(
            chan_id=scid,
            funding_txid=txid,
            output_index=0,
            remote_pubkey=remote_pubkey,
            capacity_sat=capacity_sat,
            local_msat=local_sat * 1000,
            remote_msat=(capacity_sat - local_sat) * 1000,
            initiator=initiator,
            private=private,
        )

    def open_channels(self) -> list[SimChannel]:
        return [c for c in self.channels.values() if c.status == "open"]

    def find_channel(self, key: int | str) -> SimChannel | None:
        """By chan_id (int or decimal string) or channel point "txid:index"."""
        if isinstance(key, int):
            return self.channels.get(key)
        if ":" in key:
            for chan in self.channels.values():
                if chan.channel_point == key:
                    return chan
            return None
        return self.channels.get(int(key)) if key.isdigit() else None

    def backup_snapshot(self) -> ln.ChanBackupSnapshot:
        chans = [c for c in self.channels.values() if c.status in ("pending_open", "open")]
        singles = [
            ln.ChannelBackup(
                chan_point=c.point_proto(),
                chan_backup=hashlib.sha256(b"scb" + c.funding_txid).digest() * 4,
            )
            for c in chans
        ]
        multi = hashlib.sha256(b"multi" + b"".join(c.funding_txid for c in chans)).digest() * (2 + len(chans))
        return ln.ChanBackupSnapshot(
            single_chan_backups=ln.ChannelBackups(chan_backups=singles),
            multi_chan_backup=ln.MultiChanBackup(
                chan_points=[c.point_proto() for c in chans], multi_chan_backup=multi
            ),
        )

    def summary(self) -> dict[str, object]:
        inv = self.invoices
        return {
            "pubkey": self.pubkey,
            "alias": self.alias,
            "state": st.WalletState.Name(self.state),
            "block_height": self.block_height,
            "invoices": len(inv.by_add),
            "settled_invoices": len(inv.settled),
            "invoices_replayed": inv.replayed,
            "channels": {
                status: sum(1 for c in self.channels.values() if c.status == status)
                for status in ("pending_open", "open", "waiting_close", "pending_force_close", "closed")
            },
            "peers": [
                {"pubkey": p.pubkey, "alias": p.alias, "online": p.online} for p in self.peers.values()
            ],
            "local_balance_msat": sum(c.local_msat for c in self.open_channels()),
            "remote_balance_msat": sum(c.remote_msat for c in self.open_channels()),
            "forwards": len(self.forwards),
            # Open streams per kind: a client that went away is no longer counted.
            "subscribers": {
                "invoices": len(inv.stream),
                "htlc_events": len(self.htlc_events),
                "channel_events": len(self.channel_events),
                "peer_events": len(self.peer_events),
                "backups": len(self.backup_events),
                "state": len(self.state_hub),
            },
        }
