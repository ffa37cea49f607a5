"""lnrpc.Lightning channel, peer, graph, fee, forwarding and backup calls (a servicer mixin)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.simnet.channels import ChannelError
from lightningd_py.simnet.node import SimChannel

if TYPE_CHECKING:
    from lightningd_py.simnet.node import NodeModel
    from lightningd_py.simnet.server import Simnet

__all__ = ["ChannelRpc"]

_CLOSE_FILTERS = {
    "cooperative": ln.ChannelCloseSummary.COOPERATIVE_CLOSE,
    "local_force": ln.ChannelCloseSummary.LOCAL_FORCE_CLOSE,
    "remote_force": ln.ChannelCloseSummary.REMOTE_FORCE_CLOSE,
    "breach": ln.ChannelCloseSummary.BREACH_CLOSE,
    "funding_canceled": ln.ChannelCloseSummary.FUNDING_CANCELED,
    "abandoned": ln.ChannelCloseSummary.ABANDONED,
}


def _point_str(point: ln.ChannelPoint) -> str:
    txid = point.funding_txid_str or point.funding_txid_bytes[::-1].hex()
    return f"{txid}:{point.output_index}"


class ChannelRpc:
    sim: Simnet
    node: NodeModel

    def _edge(self, chan: SimChannel) -> ln.ChannelEdge:
        node = self.node
        ours = ln.RoutingPolicy(
            time_lock_delta=chan.time_lock_delta,
            min_htlc=chan.min_htlc_msat,
            fee_base_msat=chan.base_fee_msat,
            fee_rate_milli_msat=chan.fee_rate_ppm,
            disabled=not chan.active,
            max_htlc_msat=chan.max_htlc_msat or chan.capacity_sat * 990,
            last_update=chan.policy_updated,
        )
        theirs = ln.RoutingPolicy(
            time_lock_delta=chan.remote_time_lock_delta,
            min_htlc=1000,
            fee_base_msat=chan.remote_base_fee_msat,
            fee_rate_milli_msat=chan.remote_fee_rate_ppm,
            max_htlc_msat=chan.capacity_sat * 990,
            last_update=chan.policy_updated,
        )
        # node1 is the lexicographically smaller key, as in the channel graph.
        first = node.pubkey < chan.remote_pubkey
        return ln.ChannelEdge(
            channel_id=chan.chan_id,
            chan_point=chan.channel_point,
            last_update=chan.policy_updated,
            node1_pub=node.pubkey if first else chan.remote_pubkey,
            node2_pub=chan.remote_pubkey if first else node.pubkey,
            capacity=chan.capacity_sat,
            node1_policy=ours if first else theirs,
            node2_policy=theirs if first else ours,
        )

    async def ListChannels(
        self, request: ln.ListChannelsRequest, context: grpc.aio.ServicerContext
    ) -> ln.ListChannelsResponse:
        node = self.node
        peer = request.peer.hex() if request.peer else ""
        out = []
        for c in node.channels.values():
            if c.status != "open":
                continue
            if (request.active_only and not c.active) or (request.inactive_only and c.active):
                continue
            if (request.public_only and c.private) or (request.private_only and not c.private):
                continue
            if peer and c.remote_pubkey != peer:
                continue
            out.append(c.to_proto(node.alias_of(c.remote_pubkey) if request.peer_alias_lookup else ""))
        return ln.ListChannelsResponse(channels=out)

    async def PendingChannels(
        self, request: ln.PendingChannelsRequest, context: grpc.aio.ServicerContext
    ) -> ln.PendingChannelsResponse:
        P = ln.PendingChannelsResponse
        resp = P()
        limbo = 0
        for c in self.node.channels.values():
            if c.status == "pending_open":
                resp.pending_open_channels.append(
                    P.PendingOpenChannel(
                        channel=c.pending_proto(), commit_fee=0, commit_weight=772, fee_per_kw=2500
                    )
                )
            elif c.status == "waiting_close":
                limbo += c.local_msat // 1000
                txid = c.closing_txid[::-1].hex()
                resp.waiting_close_channels.append(
                    P.WaitingCloseChannel(
                        channel=c.pending_proto(),
                        limbo_balance=c.local_msat // 1000,
                        commitments=P.Commitments(local_txid=txid),
                        closing_txid=txid,
                    )
                )
            elif c.status == "pending_force_close":
                limbo += c.local_msat // 1000
                left = (
                    self.sim.channels.resolve_at.get(c.chan_id, self.node.block_height)
                    - self.node.block_height
                )
                resp.pending_force_closing_channels.append(
                    P.ForceClosedChannel(
                        channel=c.pending_proto(),
                        closing_txid=c.closing_txid[::-1].hex(),
                        limbo_balance=c.local_msat // 1000,
                        maturity_height=self.node.block_height + left,
                        blocks_til_maturity=left,
                    )
                )
        resp.total_limbo_balance = limbo
        return resp

    async def ClosedChannels(
        self, request: ln.ClosedChannelsRequest, context: grpc.aio.ServicerContext
    ) -> ln.ClosedChannelsResponse:
        wanted = {t for name, t in _CLOSE_FILTERS.items() if getattr(request, name)}
        out = [
            c.close_summary(self.node.chain_hash)
            for c in self.node.channels.values()
            if c.status in ("closed", "pending_force_close") and (not wanted or c.close_type in wanted)
        ]
        return ln.ClosedChannelsResponse(channels=out)

    async def SubscribeChannelEvents(
        self, request: ln.ChannelEventSubscription, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.ChannelEventUpdate]:
        async for update in self.node.channel_events.subscribe():
            yield update

    def _open_from(self, request: ln.OpenChannelRequest) -> SimChannel:
        pubkey = request.node_pubkey.hex() if request.node_pubkey else request.node_pubkey_string
        if not pubkey:
            raise ChannelError("node_pubkey: a 33-byte public key is required")
        return self.sim.channels.open(pubkey, request.local_funding_amount, request.push_sat, request.private)

    async def OpenChannelSync(
        self, request: ln.OpenChannelRequest, context: grpc.aio.ServicerContext
    ) -> ln.ChannelPoint:
        try:
            chan = self._open_from(request)
        except ChannelError as exc:
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
            raise
        self.sim.schedule_confirmations()
        return chan.point_proto()

    async def OpenChannel(
        self, request: ln.OpenChannelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.OpenStatusUpdate]:
        updates = self.sim.channels.updates.subscribe()
        try:
            chan = self._open_from(request)
        except ChannelError as exc:
            updates.close()
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
            raise
        pending_id = chan.funding_txid
        yield ln.OpenStatusUpdate(
            chan_pending=ln.PendingUpdate(txid=chan.funding_txid, output_index=chan.output_index),
            pending_chan_id=pending_id,
        )
        self.sim.schedule_confirmations()
        temp_id = chan.chan_id
        async for kind, chan_id in updates:
            if kind == "open" and chan_id == temp_id:
                yield ln.OpenStatusUpdate(
                    chan_open=ln.ChannelOpenUpdate(channel_point=chan.point_proto()),
                    pending_chan_id=pending_id,
                )
                return

    async def CloseChannel(
        self, request: ln.CloseChannelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.CloseStatusUpdate]:
        chan = self.node.find_channel(_point_str(request.channel_point))
        if chan is None:
            await context.abort(grpc.StatusCode.UNKNOWN, "unable to find channel")
            return
        updates = self.sim.channels.updates.subscribe()
        try:
            self.sim.channels.close(chan, force=request.force)
        except ChannelError as exc:
            updates.close()
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
            return
        yield ln.CloseStatusUpdate(close_pending=ln.PendingUpdate(txid=chan.closing_txid, output_index=0))
        self.sim.schedule_confirmations()
        async for kind, chan_id in updates:
            if kind == "closed" and chan_id == chan.chan_id:
                yield ln.CloseStatusUpdate(
                    chan_close=ln.ChannelCloseUpdate(closing_txid=chan.closing_txid, success=True)
                )
                return

    async def ListPeers(
        self, request: ln.ListPeersRequest, context: grpc.aio.ServicerContext
    ) -> ln.ListPeersResponse:
        peers = []
        for p in self.node.peers.values():
            if not p.online:
                continue
            chans = [c for c in self.node.channels.values() if c.remote_pubkey == p.pubkey]
            peers.append(
                ln.Peer(
                    pub_key=p.pubkey,
                    address=p.address,
                    bytes_sent=1000 + 100 * len(chans),
                    bytes_recv=1000 + 120 * len(chans),
                    sat_sent=sum(c.sent_msat for c in chans) // 1000,
                    sat_recv=sum(c.received_msat for c in chans) // 1000,
                    inbound=p.inbound,
                    ping_time=1500,
                    sync_type=ln.Peer.ACTIVE_SYNC,
                )
            )
        return ln.ListPeersResponse(peers=peers)

    async def SubscribePeerEvents(
        self, request: ln.PeerEventSubscription, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.PeerEvent]:
        async for event in self.node.peer_events.subscribe():
            yield event

    async def ConnectPeer(
        self, request: ln.ConnectPeerRequest, context: grpc.aio.ServicerContext
    ) -> ln.ConnectPeerResponse:
        pubkey = request.addr.pubkey
        try:
            key_ok = len(bytes.fromhex(pubkey)) == 33
        except ValueError:
            key_ok = False
        if not key_ok:
            await context.abort(grpc.StatusCode.UNKNOWN, "addr.pubkey: expected a 33-byte hex public key")
        peer = self.node.peers.get(pubkey)
        if peer is not None and peer.online:
            await context.abort(
                grpc.StatusCode.UNKNOWN, f"already connected to peer: {pubkey}@{peer.address}"
            )
        if peer is None:
            await context.abort(
                grpc.StatusCode.UNKNOWN, f"dial tcp {request.addr.host or '?'}: connect: connection refused"
            )
        self.sim.channels.set_peer_online(pubkey, True)
        return ln.ConnectPeerResponse()

    async def GetChanInfo(
        self, request: ln.ChanInfoRequest, context: grpc.aio.ServicerContext
    ) -> ln.ChannelEdge:
        chan = self.node.channels.get(request.chan_id)
        if chan is None or chan.status not in ("open",):
            await context.abort(grpc.StatusCode.UNKNOWN, "edge not found")
            raise AssertionError
        return self._edge(chan)

    async def GetNodeInfo(
        self, request: ln.NodeInfoRequest, context: grpc.aio.ServicerContext
    ) -> ln.NodeInfo:
        node = self.node
        if request.pub_key == node.pubkey:
            alias, chans = (
                node.alias,
                [c for c in node.channels.values() if c.status == "open" and not c.private],
            )
        elif request.pub_key in node.peers:
            alias = node.peers[request.pub_key].alias
            chans = [
                c for c in node.channels.values() if c.status == "open" and c.remote_pubkey == request.pub_key
            ]
        else:
            await context.abort(grpc.StatusCode.UNKNOWN, "unable to find node")
            raise AssertionError
        info = ln.NodeInfo(
            node=ln.LightningNode(
                last_update=int(time.time()),
                pub_key=request.pub_key,
                alias=alias,
                addresses=[ln.NodeAddress(network="tcp", addr="127.0.0.1:9735")],
                color="#3399ff",
            ),
            num_channels=len(chans),
            total_capacity=sum(c.capacity_sat for c in chans),
        )
        if request.include_channels:
            info.channels.extend(self._edge(c) for c in chans)
        return info

    async def FeeReport(
        self, request: ln.FeeReportRequest, context: grpc.aio.ServicerContext
    ) -> ln.FeeReportResponse:
        now_ns = time.time_ns()
        day = week = month = 0
        for f in self.node.forwards:
            age = now_ns - f.timestamp_ns
            fee = (f.amt_in_msat - f.amt_out_msat) // 1000
            if age <= 86_400 * 10**9:
                day += fee
            if age <= 7 * 86_400 * 10**9:
                week += fee
            if age <= 30 * 86_400 * 10**9:
                month += fee
        fees = [
            ln.ChannelFeeReport(
                chan_id=c.chan_id,
                channel_point=c.channel_point,
                base_fee_msat=c.base_fee_msat,
                fee_per_mil=c.fee_rate_ppm,
                fee_rate=c.fee_rate_ppm / 1_000_000,
            )
            for c in self.node.channels.values()
            if c.status == "open"
        ]
        return ln.FeeReportResponse(
            channel_fees=fees, day_fee_sum=day, week_fee_sum=week, month_fee_sum=month
        )

    async def UpdateChannelPolicy(
        self, request: ln.PolicyUpdateRequest, context: grpc.aio.ServicerContext
    ) -> ln.PolicyUpdateResponse:
        if request.time_lock_delta and request.time_lock_delta < 18:
            await context.abort(
                grpc.StatusCode.UNKNOWN,
                f"time lock delta of {request.time_lock_delta} is too small, minimum supported is 18",
            )
        if request.WhichOneof("scope") == "chan_point":
            point = _point_str(request.chan_point)
            chan = self.node.find_channel(point)
            targets = [chan] if chan is not None and chan.status == "open" else []
            if not targets:
                txid, _, idx = point.partition(":")
                return ln.PolicyUpdateResponse(
                    failed_updates=[
                        ln.FailedUpdate(
                            outpoint=ln.OutPoint(txid_str=txid, output_index=int(idx or 0)),
                            reason=ln.UPDATE_FAILURE_NOT_FOUND,
                            update_error="not found",
                        )
                    ]
                )
        else:
            targets = [c for c in self.node.channels.values() if c.status == "open"]
        ppm = request.fee_rate_ppm or round(request.fee_rate * 1_000_000)
        for chan in targets:
            chan.base_fee_msat = request.base_fee_msat
            chan.fee_rate_ppm = ppm
            if request.time_lock_delta:
                chan.time_lock_delta = request.time_lock_delta
            if request.max_htlc_msat:
                chan.max_htlc_msat = request.max_htlc_msat
            if request.min_htlc_msat_specified:
                chan.min_htlc_msat = request.min_htlc_msat
            chan.policy_updated = int(time.time())
        return ln.PolicyUpdateResponse()

    async def ForwardingHistory(
        self, request: ln.ForwardingHistoryRequest, context: grpc.aio.ServicerContext
    ) -> ln.ForwardingHistoryResponse:
        end = request.end_time or int(time.time()) + 1
        start = request.start_time or int(time.time()) - 86_400
        limit = request.num_max_events or 100
        node = self.node
        matching = [f for f in node.forwards if start * 10**9 <= f.timestamp_ns < end * 10**9]
        page = matching[request.index_offset : request.index_offset + limit]
        alias = request.peer_alias_lookup
        events = []
        for f in page:
            cin, cout = node.channels.get(f.chan_id_in), node.channels.get(f.chan_id_out)
            events.append(
                f.to_proto(
                    node.alias_of(cin.remote_pubkey) if alias and cin else "",
                    node.alias_of(cout.remote_pubkey) if alias and cout else "",
                )
            )
        return ln.ForwardingHistoryResponse(
            forwarding_events=events, last_offset_index=request.index_offset + len(page)
        )

    async def ExportAllChannelBackups(
        self, request: ln.ChanBackupExportRequest, context: grpc.aio.ServicerContext
    ) -> ln.ChanBackupSnapshot:
        return self.node.backup_snapshot()

    async def SubscribeChannelBackups(
        self, request: ln.ChannelBackupSubscription, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.ChanBackupSnapshot]:
        async for snap in self.node.backup_events.subscribe():
            yield snap

    async def QueryRoutes(
        self, request: ln.QueryRoutesRequest, context: grpc.aio.ServicerContext
    ) -> ln.QueryRoutesResponse:
        amt_msat = request.amt_msat or request.amt * 1000
        try:
            route = self.sim.payments.build_route(
                dest=request.pub_key,
                amt_msat=amt_msat,
                outgoing_chan_ids=[request.outgoing_chan_id] if request.outgoing_chan_id else [],
                last_hop_pubkey=request.last_hop_pubkey.hex(),
                final_cltv=request.final_cltv_delta or 80,
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
            raise
        return ln.QueryRoutesResponse(routes=[route.to_proto()], success_prob=0.9)
