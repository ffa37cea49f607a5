"""Payments (circular self-payments, fee limits, external payees), forwards and HTLC events."""

from __future__ import annotations

import asyncio
import hashlib
import os

import grpc
import pytest

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2 as rt

from .conftest import SimnetProc, stubs

P = ln.Payment


def key(e: rt.HtlcEvent) -> tuple[int, int, int, int]:
    return (e.incoming_channel_id, e.incoming_htlc_id, e.outgoing_channel_id, e.outgoing_htlc_id)


async def _payment_updates(call: object) -> list[ln.Payment]:
    out: list[ln.Payment] = []
    async for update in call:  # type: ignore[attr-defined]
        out.append(update)
    return out


def _statuses(updates: list[ln.Payment]) -> list[int]:
    """Statuses with repeats folded (LND sends IN_FLIGHT again when an HTLC attempt starts)."""
    out: list[int] = []
    for u in updates:
        if not out or out[-1] != u.status:
            out.append(u.status)
    return out


def test_circular_self_payment_moves_balances_and_settles(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, router, _, _ = stubs(ch)
            chans = (await lnd.ListChannels(ln.ListChannelsRequest())).channels
            out = max(chans, key=lambda c: c.local_balance)
            inc = max(
                (c for c in chans if c.remote_pubkey != out.remote_pubkey), key=lambda c: c.remote_balance
            )
            amt = 100_000_000  # msat
            invoice = await lnd.AddInvoice(ln.Invoice(value_msat=amt, memo="rebalance"))
            track_all = router.TrackPayments(rt.TrackPaymentsRequest())
            await asyncio.sleep(0.1)
            req = rt.SendPaymentRequest(
                payment_request=invoice.payment_request,
                fee_limit_msat=0,
                timeout_seconds=10,
                outgoing_chan_ids=[out.chan_id],
                last_hop_pubkey=bytes.fromhex(inc.remote_pubkey),
                allow_self_payment=True,
            )
            failed = await _payment_updates(router.SendPaymentV2(req))
            assert _statuses(failed) == [P.IN_FLIGHT, P.FAILED]
            assert failed[-1].failure_reason == ln.FAILURE_REASON_NO_ROUTE

            # The same payment with room for the fee: hop fees from the route's policies.
            edge = await lnd.GetChanInfo(ln.ChanInfoRequest(chan_id=inc.chan_id))
            theirs = edge.node1_policy if edge.node1_pub == inc.remote_pubkey else edge.node2_policy
            fee_last = theirs.fee_base_msat + amt * theirs.fee_rate_milli_msat // 1_000_000
            fee_mid = 1000 + (amt + fee_last) // 1_000_000
            req.fee_limit_msat = 50_000
            updates = await _payment_updates(router.SendPaymentV2(req))
            assert _statuses(updates) == [P.IN_FLIGHT, P.SUCCEEDED]
            done = updates[-1]
            assert done.fee_msat == fee_last + fee_mid and done.value_msat == amt
            assert hashlib.sha256(bytes.fromhex(done.payment_preimage)).digest() == invoice.r_hash
            assert done.htlcs[0].route.hops[0].chan_id == out.chan_id
            assert done.htlcs[0].route.hops[-1].chan_id == inc.chan_id
            hops, route = done.htlcs[0].route.hops, done.htlcs[0].route
            assert (hops[-1].amt_to_forward_msat, hops[-1].fee_msat) == (amt, 0)
            assert (
                hops[0].amt_to_forward_msat + hops[0].fee_msat == route.total_amt_msat == amt + done.fee_msat
            )
            assert route.total_time_lock > hops[0].expiry > hops[-1].expiry

            settled = await lnd.LookupInvoice(ln.PaymentHash(r_hash=invoice.r_hash))
            assert settled.state == ln.Invoice.SETTLED and settled.amt_paid_msat == amt
            after = {c.chan_id: c for c in (await lnd.ListChannels(ln.ListChannelsRequest())).channels}
            assert (
                after[out.chan_id].local_balance == (out.local_balance * 1000 - amt - done.fee_msat) // 1000
            )
            assert after[inc.chan_id].local_balance == inc.local_balance + amt // 1000

            # Paying it again is refused like LND does.
            again = router.SendPaymentV2(req)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await again.read()
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert err.value.details() == "invoice is already paid"

            tracked = await _payment_updates(
                router.TrackPaymentV2(rt.TrackPaymentRequest(payment_hash=invoice.r_hash))
            )
            assert [u.status for u in tracked] == [P.SUCCEEDED]
            listed = await lnd.ListPayments(ln.ListPaymentsRequest(include_incomplete=True))
            assert [p.payment_index for p in listed.payments] == [1, 2]
            assert (listed.first_index_offset, listed.last_index_offset) == (1, 2)
            only_ok = await lnd.ListPayments(ln.ListPaymentsRequest())
            assert [p.status for p in only_ok.payments] == [P.SUCCEEDED]
            stream_seen: list[ln.Payment] = []
            async for update in track_all:
                stream_seen.append(update)
                if len(stream_seen) == 5:
                    break
            assert _statuses(stream_seen) == [P.IN_FLIGHT, P.FAILED, P.IN_FLIGHT, P.SUCCEEDED]
            track_all.cancel()

    asyncio.run(run())


def test_external_payment_and_forced_failure(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, router, _, _ = stubs(ch)
            peer = (await lnd.ListPeers(ln.ListPeersRequest())).peers[0].pub_key
            ext = simnet.control.external_invoice(peer, 2_000_000, memo="coffee")
            decoded = await lnd.DecodePayReq(ln.PayReqString(pay_req=ext["payment_request"]))
            assert decoded.destination == peer and decoded.num_msat == 2_000_000
            simnet.control.fail_next_payment("FAILURE_REASON_TIMEOUT")
            req = rt.SendPaymentRequest(
                payment_request=ext["payment_request"], fee_limit_msat=10_000, timeout_seconds=5
            )
            failed = await _payment_updates(router.SendPaymentV2(req))
            assert failed[-1].status == P.FAILED and failed[-1].failure_reason == ln.FAILURE_REASON_TIMEOUT
            ok = await _payment_updates(router.SendPaymentV2(req))
            assert ok[-1].status == P.SUCCEEDED and ok[-1].payment_preimage == ext["preimage"]
            unknown = rt.SendPaymentRequest(
                dest=bytes.fromhex(peer), amt_msat=1000, payment_hash=os.urandom(32), timeout_seconds=5
            )
            res = await _payment_updates(router.SendPaymentV2(unknown))
            assert res[-1].failure_reason == ln.FAILURE_REASON_INCORRECT_PAYMENT_DETAILS
            secret = os.urandom(32)
            keysend = rt.SendPaymentRequest(
                dest=bytes.fromhex(peer),
                amt_msat=5000,
                payment_hash=hashlib.sha256(secret).digest(),
                dest_custom_records={5482373484: secret},
                timeout_seconds=5,
            )
            res = await _payment_updates(router.SendPaymentV2(keysend))
            assert res[-1].status == P.SUCCEEDED and res[-1].payment_preimage == secret.hex()
            huge = rt.SendPaymentRequest(
                dest=bytes.fromhex(peer), amt_msat=10**13, payment_hash=os.urandom(32), timeout_seconds=5
            )
            res = await _payment_updates(router.SendPaymentV2(huge))
            assert res[-1].failure_reason == ln.FAILURE_REASON_INSUFFICIENT_BALANCE

    asyncio.run(run())


def test_forward_emits_htlc_events_and_history(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, router, _, _ = stubs(ch)
            chans = (await lnd.ListChannels(ln.ListChannelsRequest())).channels
            cin = max(chans, key=lambda c: c.remote_balance)
            cout = max((c for c in chans if c.chan_id != cin.chan_id), key=lambda c: c.local_balance)
            events = router.SubscribeHtlcEvents(rt.SubscribeHtlcEventsRequest())
            first = await events.read()
            assert first.HasField("subscribed_event")
            res = await asyncio.to_thread(
                simnet.control.forward, cin.chan_id, cout.chan_id, 50_000_000, 1_500
            )
            assert res["settled"]
            fwd, settle, final = await events.read(), await events.read(), await events.read()
            assert fwd.HasField("forward_event") and fwd.event_type == rt.HtlcEvent.FORWARD
            assert fwd.forward_event.info.outgoing_amt_msat == 50_000_000
            assert fwd.forward_event.info.incoming_amt_msat == 50_001_500
            assert settle.HasField("settle_event")
            assert key(fwd) == key(settle) and fwd.incoming_channel_id == cin.chan_id
            assert final.HasField("final_htlc_event") and final.final_htlc_event.settled
            await asyncio.to_thread(simnet.control.forward, cin.chan_id, cout.chan_id, 1_000, 1, True)
            f2, fail = await events.read(), await events.read()
            assert (
                f2.HasField("forward_event") and fail.HasField("forward_fail_event") and key(f2) == key(fail)
            )
            events.cancel()

            hist = await lnd.ForwardingHistory(ln.ForwardingHistoryRequest(peer_alias_lookup=True))
            assert len(hist.forwarding_events) == 1 and hist.last_offset_index == 1
            ev = hist.forwarding_events[0]
            assert (ev.chan_id_in, ev.chan_id_out, ev.fee_msat) == (cin.chan_id, cout.chan_id, 1_500)
            assert ev.peer_alias_in
            after = {c.chan_id: c for c in (await lnd.ListChannels(ln.ListChannelsRequest())).channels}
            assert after[cout.chan_id].local_balance == cout.local_balance - 50_000
            assert after[cin.chan_id].local_balance == cin.local_balance + 50_001
            report = await lnd.FeeReport(ln.FeeReportRequest())
            assert report.day_fee_sum == 1

    asyncio.run(run())


def test_query_routes_then_send_to_route(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, router, _, _ = stubs(ch)
            info = await lnd.GetInfo(ln.GetInfoRequest())
            chans = (await lnd.ListChannels(ln.ListChannelsRequest())).channels
            out = max(chans, key=lambda c: c.local_balance)
            inc = max(
                (c for c in chans if c.remote_pubkey != out.remote_pubkey), key=lambda c: c.remote_balance
            )
            invoice = await lnd.AddInvoice(ln.Invoice(value_msat=20_000_000))
            routes = await lnd.QueryRoutes(
                ln.QueryRoutesRequest(
                    pub_key=info.identity_pubkey,
                    amt_msat=20_000_000,
                    outgoing_chan_id=out.chan_id,
                    last_hop_pubkey=bytes.fromhex(inc.remote_pubkey),
                )
            )
            route = routes.routes[0]
            assert route.hops[0].chan_id == out.chan_id and route.hops[-1].pub_key == info.identity_pubkey
            attempt = await router.SendToRouteV2(
                rt.SendToRouteRequest(payment_hash=invoice.r_hash, route=route)
            )
            assert attempt.status == ln.HTLCAttempt.SUCCEEDED
            assert hashlib.sha256(attempt.preimage).digest() == invoice.r_hash
            got = await lnd.LookupInvoice(ln.PaymentHash(r_hash=invoice.r_hash))
            assert got.state == ln.Invoice.SETTLED
            payments = (await lnd.ListPayments(ln.ListPaymentsRequest())).payments
            assert [p.fee_msat for p in payments] == [route.total_fees_msat]

    asyncio.run(run())
