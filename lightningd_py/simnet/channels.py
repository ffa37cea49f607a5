"""Channel lifecycle on the simulated chain: open, confirm, close (cooperative or forced), resolve.

Blocks are mined by the control API (or automatically after a short delay when configured).
Events follow LND's order: PENDING_OPEN, then OPEN and ACTIVE at confirmation; INACTIVE when a
close starts, CLOSED when the closing transaction confirms, FULLY_RESOLVED when nothing is left
in limbo (at once for a cooperative close, after the CSV delay for a force close). The channel
backup stream gets a new snapshot whenever the set of channels changes.
"""

from __future__ import annotations

import time

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.simnet.hub import Hub
from lightningd_py.simnet.node import NodeModel, SimChannel

__all__ = ["CONFIRMATIONS", "FORCE_CLOSE_MATURITY", "MIN_CHAN_SIZE", "ChannelBook", "ChannelError"]

CONFIRMATIONS = 3
FORCE_CLOSE_MATURITY = 5  # blocks until a force close is fully resolved (LND: the CSV delay)
MIN_CHAN_SIZE = 20_000
MAX_CHAN_SIZE = 16_777_215
FUNDING_FEE_SAT = 2_000
U = ln.ChannelEventUpdate


class ChannelError(Exception):
    """A channel operation LND would refuse; str() is the message LND gives."""


class ChannelBook:
    """Operations on the node's channels; `updates` carries (kind, chan_id) to waiting streams."""

    def __init__(self, node: NodeModel) -> None:
        self.node = node
        self.updates: Hub[tuple[str, int]] = Hub()
        self.confirm_at: dict[int, int] = {}
        self.resolve_at: dict[int, int] = {}

    def _event(self, update: ln.ChannelEventUpdate) -> None:
        self.node.channel_events.publish(update)

    def _backup(self) -> None:
        self.node.backup_events.publish_lazy(self.node.backup_snapshot)

    # ---- open -------------------------------------------------------------------------
    def open(
        self, remote_pubkey: str, local_sat: int, push_sat: int = 0, private: bool = False
    ) -> SimChannel:
        node = self.node
        peer = node.peers.get(remote_pubkey)
        if peer is None or not peer.online:
            raise ChannelError(f"peer {remote_pubkey} is not online")
        if local_sat < MIN_CHAN_SIZE:
            minimum = MIN_CHAN_SIZE / 1e8
            raise ChannelError(
                f"chan size of {local_sat / 1e8:.8f} BTC is below min chan size of {minimum:.8f} BTC"
            )
        if local_sat > MAX_CHAN_SIZE:
            raise ChannelError(
                f"funding amount is too large, the max channel size is: {MAX_CHAN_SIZE / 1e8:.8f} BTC"
            )
        if push_sat < 0 or push_sat >= local_sat:
            raise ChannelError(
                "amount pushed to remote peer for initial state must be below the local funding amount"
            )
        need = local_sat + FUNDING_FEE_SAT
        if node.wallet_confirmed_sat < need:
            raise ChannelError(
                f"not enough witness outputs to create funding transaction, need {need / 1e8:.8f} BTC "
                f"only have {node.wallet_confirmed_sat / 1e8:.8f} BTC available"
            )
        node.wallet_confirmed_sat -= need
        chan = node.new_channel(remote_pubkey, local_sat, local_sat - push_sat, private=private)
        chan.push_sat = push_sat
        chan.status = "pending_open"
        chan.active = False
        node.channels[chan.chan_id] = chan
        self.confirm_at[chan.chan_id] = node.block_height + CONFIRMATIONS
        self._event(
            U(
                type=U.PENDING_OPEN_CHANNEL,
                pending_open_channel=ln.PendingUpdate(txid=chan.funding_txid, output_index=0),
            )
        )
        self._backup()
        return chan

    def _confirm_open(self, chan: SimChannel) -> None:
        # The short channel id is only known once the funding transaction is in a block.
        old_id = chan.chan_id
        del self.node.channels[old_id]
        chan.chan_id = (self.node.block_height << 40) | (chan.chan_id & 0xFFFFFFFFFF)
        self.node.channels[chan.chan_id] = chan
        chan.status = "open"
        chan.active = True
        chan.opened_at = time.time()
        self._event(
            U(type=U.OPEN_CHANNEL, open_channel=chan.to_proto(self.node.alias_of(chan.remote_pubkey)))
        )
        self._event(U(type=U.ACTIVE_CHANNEL, active_channel=chan.point_proto()))
        self.updates.publish(("open", old_id))
        self.updates.publish(("open", chan.chan_id))

    # ---- close ------------------------------------------------------------------------
    def close(self, chan: SimChannel, force: bool = False) -> SimChannel:
        if chan.status == "pending_open":
            raise ChannelError("cannot close pending channel")
        if chan.status != "open":
            raise ChannelError(f"channel {chan.channel_point} is already closing or closed")
        peer = self.node.peers.get(chan.remote_pubkey)
        if not force and (peer is None or not peer.online):
            raise ChannelError(f"peer {chan.remote_pubkey} is not online, use force to close")
        chan.closing_txid = self.node.new_txid()
        chan.close_initiator = ln.INITIATOR_LOCAL
        chan.close_type = (
            ln.ChannelCloseSummary.LOCAL_FORCE_CLOSE if force else ln.ChannelCloseSummary.COOPERATIVE_CLOSE
        )
        chan.status = "waiting_close"
        if chan.active:
            chan.active = False
            self._event(U(type=U.INACTIVE_CHANNEL, inactive_channel=chan.point_proto()))
        self.confirm_at[chan.chan_id] = self.node.block_height + 1
        self._backup()
        return chan

    def remote_force_close(self, chan: SimChannel) -> SimChannel:
        self.close(chan, force=True)
        chan.close_initiator = ln.INITIATOR_REMOTE
        chan.close_type = ln.ChannelCloseSummary.REMOTE_FORCE_CLOSE
        return chan

    def _confirm_close(self, chan: SimChannel) -> None:
        node = self.node
        chan.close_height = node.block_height
        self._event(U(type=U.CLOSED_CHANNEL, closed_channel=chan.close_summary(node.chain_hash)))
        self.updates.publish(("closed", chan.chan_id))
        if chan.close_type == ln.ChannelCloseSummary.LOCAL_FORCE_CLOSE:
            chan.status = "pending_force_close"
            self.resolve_at[chan.chan_id] = node.block_height + FORCE_CLOSE_MATURITY
        else:
            self._resolve(chan)

    def _resolve(self, chan: SimChannel) -> None:
        chan.status = "closed"
        self.node.wallet_confirmed_sat += chan.local_msat // 1000
        self._event(U(type=U.FULLY_RESOLVED_CHANNEL, fully_resolved_channel=chan.point_proto()))

    # ---- chain ------------------------------------------------------------------------
    def mine(self, blocks: int = 1) -> int:
        """Mine blocks one by one, confirming what becomes due; returns the new height."""
        node = self.node
        for _ in range(max(0, blocks)):
            node.block_height += 1
            due = [cid for cid, h in self.confirm_at.items() if h <= node.block_height]
            for cid in due:
                del self.confirm_at[cid]
                chan = node.channels.get(cid)
                if chan is None:
                    continue
                if chan.status == "pending_open":
                    self._confirm_open(chan)
                elif chan.status == "waiting_close":
                    self._confirm_close(chan)
            for cid in [cid for cid, h in self.resolve_at.items() if h <= node.block_height]:
                del self.resolve_at[cid]
                chan = node.channels.get(cid)
                if chan is not None and chan.status == "pending_force_close":
                    self._resolve(chan)
            if due:
                self._backup()
        return node.block_height

    def blocks_until_confirmed(self, chan_id: int) -> int:
        h = self.confirm_at.get(chan_id)
        return 0 if h is None else max(0, h - self.node.block_height)

    def set_active(self, chan: SimChannel, active: bool) -> None:
        if chan.status != "open" or chan.active == active:
            return
        chan.active = active
        if active:
            self._event(U(type=U.ACTIVE_CHANNEL, active_channel=chan.point_proto()))
        else:
            self._event(U(type=U.INACTIVE_CHANNEL, inactive_channel=chan.point_proto()))

    def set_peer_online(self, pubkey: str, online: bool) -> None:
        peer = self.node.peers.get(pubkey)
        if peer is None or peer.online == online:
            return
        peer.online = online
        self.node.peer_events.publish(
            ln.PeerEvent(
                pub_key=pubkey, type=ln.PeerEvent.PEER_ONLINE if online else ln.PeerEvent.PEER_OFFLINE
            )
        )
        for chan in list(self.node.channels.values()):
            if chan.remote_pubkey == pubkey:
                self.set_active(chan, online)
