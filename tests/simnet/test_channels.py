"""Channel lifecycle, events and backups, policies, peers and the read-only node calls."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.simnet.control import SimnetControlError

from .conftest import SimnetProc, stubs

U = ln.ChannelEventUpdate


async def _take(call: object, n: int) -> list[object]:
    out = []
    for _ in range(n):
        out.append(await asyncio.wait_for(call.read(), 5))  # type: ignore[attr-defined]
    return out


def test_open_and_close_events_and_backups(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, _, _ = stubs(ch)
            events = lnd.SubscribeChannelEvents(ln.ChannelEventSubscription())
            backups = lnd.SubscribeChannelBackups(ln.ChannelBackupSubscription())
            await asyncio.sleep(0.2)
            before = len(
                (
                    await lnd.ExportAllChannelBackups(ln.ChanBackupExportRequest())
                ).multi_chan_backup.chan_points
            )
            peer = (await lnd.ListPeers(ln.ListPeersRequest())).peers[0].pub_key
            opening = lnd.OpenChannel(
                ln.OpenChannelRequest(node_pubkey=bytes.fromhex(peer), local_funding_amount=500_000)
            )
            pending = await opening.read()
            assert pending.HasField("chan_pending")
            pend = await lnd.PendingChannels(ln.PendingChannelsRequest())
            assert [p.channel.capacity for p in pend.pending_open_channels] == [500_000]
            opened = await asyncio.wait_for(opening.read(), 5)  # confirmed after the short delay
            assert opened.HasField("chan_open")
            assert opened.chan_open.channel_point.funding_txid_bytes == pending.chan_pending.txid
            kinds = [e.type for e in await _take(events, 3)]  # type: ignore[attr-defined]
            assert kinds == [U.PENDING_OPEN_CHANNEL, U.OPEN_CHANNEL, U.ACTIVE_CHANNEL]
            snaps = await _take(backups, 2)
            assert len(snaps[-1].multi_chan_backup.chan_points) == before + 1  # type: ignore[attr-defined]

            point = opened.chan_open.channel_point
            closing = lnd.CloseChannel(ln.CloseChannelRequest(channel_point=point))
            assert (await closing.read()).HasField("close_pending")
            closed = await asyncio.wait_for(closing.read(), 5)
            assert closed.chan_close.success
            kinds = [e.type for e in await _take(events, 3)]  # type: ignore[attr-defined]
            assert kinds == [U.INACTIVE_CHANNEL, U.CLOSED_CHANNEL, U.FULLY_RESOLVED_CHANNEL]
            summaries = (await lnd.ClosedChannels(ln.ClosedChannelsRequest(cooperative=True))).channels
            assert len(summaries) == 1 and summaries[0].close_type == ln.ChannelCloseSummary.COOPERATIVE_CLOSE
            snaps = await _take(backups, 1)
            assert len(snaps[-1].multi_chan_backup.chan_points) == before  # type: ignore[attr-defined]

            # Force close: in limbo until the CSV delay passes.
            victim = (await lnd.ListChannels(ln.ListChannelsRequest())).channels[0]
            await asyncio.to_thread(simnet.control.close_channel, victim.chan_id, True, False, True)
            pend = await lnd.PendingChannels(ln.PendingChannelsRequest())
            assert [p.channel.channel_point for p in pend.pending_force_closing_channels] == [
                victim.channel_point
            ]
            assert pend.total_limbo_balance == victim.local_balance
            await asyncio.to_thread(simnet.control.mine, 5)
            assert not (await lnd.PendingChannels(ln.PendingChannelsRequest())).pending_force_closing_channels
            forced = (await lnd.ClosedChannels(ln.ClosedChannelsRequest(local_force=True))).channels
            assert [c.chan_id for c in forced] == [victim.chan_id]
            events.cancel()
            backups.cancel()

    asyncio.run(run())


def test_policies_peers_and_node_calls(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, _, _ = stubs(ch)
            info = await lnd.GetInfo(ln.GetInfoRequest())
            assert (
                info.num_active_channels == 10 and info.num_peers == 5 and info.chains[0].network == "regtest"
            )
            chan = (await lnd.ListChannels(ln.ListChannelsRequest())).channels[0]
            await lnd.UpdateChannelPolicy(
                ln.PolicyUpdateRequest(
                    chan_point=ln.ChannelPoint(
                        funding_txid_str=chan.channel_point.split(":")[0], output_index=0
                    ),
                    base_fee_msat=2500,
                    fee_rate_ppm=321,
                    time_lock_delta=40,
                )
            )
            report = {f.chan_id: f for f in (await lnd.FeeReport(ln.FeeReportRequest())).channel_fees}
            assert (report[chan.chan_id].base_fee_msat, report[chan.chan_id].fee_per_mil) == (2500, 321)
            edge = await lnd.GetChanInfo(ln.ChanInfoRequest(chan_id=chan.chan_id))
            ours = edge.node1_policy if edge.node1_pub == info.identity_pubkey else edge.node2_policy
            assert (ours.fee_base_msat, ours.fee_rate_milli_msat, ours.time_lock_delta) == (2500, 321, 40)
            node = await lnd.GetNodeInfo(
                ln.NodeInfoRequest(pub_key=chan.remote_pubkey, include_channels=True)
            )
            assert node.node.alias and node.num_channels == len(node.channels) >= 1

            peer_events = lnd.SubscribePeerEvents(ln.PeerEventSubscription())
            chan_events = lnd.SubscribeChannelEvents(ln.ChannelEventSubscription())
            await asyncio.sleep(0.2)
            await asyncio.to_thread(simnet.control.set_peer_online, chan.remote_pubkey, False)
            off = await asyncio.wait_for(peer_events.read(), 5)
            assert (off.pub_key, off.type) == (chan.remote_pubkey, ln.PeerEvent.PEER_OFFLINE)
            assert (await asyncio.wait_for(chan_events.read(), 5)).type == U.INACTIVE_CHANNEL
            peers = {p.pub_key for p in (await lnd.ListPeers(ln.ListPeersRequest())).peers}
            assert chan.remote_pubkey not in peers
            await lnd.ConnectPeer(ln.ConnectPeerRequest(addr=ln.LightningAddress(pubkey=chan.remote_pubkey)))
            on = await asyncio.wait_for(peer_events.read(), 5)
            assert on.type == ln.PeerEvent.PEER_ONLINE
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await lnd.ConnectPeer(
                    ln.ConnectPeerRequest(addr=ln.LightningAddress(pubkey=chan.remote_pubkey))
                )
            assert "already connected to peer" in (err.value.details() or "")
            peer_events.cancel()
            chan_events.cancel()

            wallet = await lnd.WalletBalance(ln.WalletBalanceRequest())
            assert wallet.confirmed_balance > 0
            bal = await lnd.ChannelBalance(ln.ChannelBalanceRequest())
            assert bal.local_balance.msat > 0 and bal.remote_balance.msat > 0
            fee = await lnd.EstimateFee(
                ln.EstimateFeeRequest(AddrToAmount={"bcrt1qexample": 10_000}, target_conf=6)
            )
            assert fee.sat_per_vbyte > 0 and fee.fee_sat > 0
            routes = await lnd.QueryRoutes(ln.QueryRoutesRequest(pub_key=chan.remote_pubkey, amt=1000))
            assert routes.routes[0].hops[-1].pub_key == chan.remote_pubkey

    asyncio.run(run())


def test_control_new_peer_wallet_and_errors(simnet: SimnetProc) -> None:
    control = simnet.control
    peer = control.add_peer("zed")
    opened = control.open_channel("zed", 300_000, push_sat=1_000, confirm=True)
    assert opened["status"] == "open"
    state = control.state()
    row = next(c for c in state["channel_list"] if c["chan_id"] == opened["chan_id"])
    assert row["peer"] == peer["pubkey"] and row["local_msat"] == 299_000_000
    assert control.set_wallet(confirmed_sat=5)["confirmed_sat"] == 5
    with pytest.raises(SimnetControlError) as err:
        control.open_channel("zed", 300_000)
    assert err.value.status == 400 and "not enough witness outputs" in err.value.message
    with pytest.raises(SimnetControlError) as err:
        control.settle_invoice("abcd")
    assert err.value.status == 400 and err.value.message.startswith("payment_hash:")
    with pytest.raises(SimnetControlError) as err:
        control.settle_invoice("00" * 32)
    assert err.value.status == 404
    with pytest.raises(SimnetControlError) as err:
        control.forward("1:0", 5, 1000)
    assert err.value.status == 404 and err.value.message.startswith("in_chan:")


def test_private_invoice_carries_route_hints(simnet: SimnetProc) -> None:
    peer = simnet.control.add_peer("hidden")
    opened = simnet.control.open_channel("hidden", 1_000_000, push_sat=400_000, private=True, confirm=True)

    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, _, _ = stubs(ch)
            public = await lnd.AddInvoice(ln.Invoice(value_msat=1_000_000))
            assert not (await lnd.DecodePayReq(ln.PayReqString(pay_req=public.payment_request))).route_hints
            private = await lnd.AddInvoice(ln.Invoice(value_msat=1_000_000, private=True))
            decoded = await lnd.DecodePayReq(ln.PayReqString(pay_req=private.payment_request))
            hops = [route.hop_hints[0] for route in decoded.route_hints]
            assert [(h.node_id, str(h.chan_id)) for h in hops] == [(peer["pubkey"], opened["chan_id"])]
            looked = await lnd.LookupInvoice(ln.PaymentHash(r_hash=private.r_hash))
            assert looked.private and looked.route_hints[0].hop_hints[0].chan_id == hops[0].chan_id

    asyncio.run(run())
