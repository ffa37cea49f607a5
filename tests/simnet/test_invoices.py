"""Invoice semantics over real gRPC: indices, listing, subscription replay, hold invoices, bursts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import grpc
import pytest

from lightningd_py.lnd.rpc import invoices_pb2 as inv
from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.simnet import bolt11
from lightningd_py.simnet.control import SimnetControlError

from .conftest import SimnetProc, stubs

INV = ln.Invoice


async def _collect(call: object, n: int, limit: float = 5.0) -> list[ln.Invoice]:
    out: list[ln.Invoice] = []

    async def run() -> None:
        async for item in call:  # type: ignore[attr-defined]
            out.append(item)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), limit)
    return out


def test_add_lookup_list_and_indices(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, _, _ = stubs(ch)
            info = await lnd.GetInfo(ln.GetInfoRequest())
            added = [
                await lnd.AddInvoice(ln.Invoice(value_msat=1000 * (i + 1), memo=f"m{i}")) for i in range(5)
            ]
            assert [a.add_index for a in added] == [1, 2, 3, 4, 5]
            pr = bolt11.decode(added[0].payment_request)
            assert added[0].payment_request.startswith("lnbcrt10n1")
            assert pr.payee.hex() == info.identity_pubkey and pr.payment_hash == added[0].r_hash
            assert pr.payment_secret == added[0].payment_addr
            decoded = await lnd.DecodePayReq(ln.PayReqString(pay_req=added[1].payment_request))
            assert decoded.destination == info.identity_pubkey and decoded.num_msat == 2000
            assert decoded.description == "m1" and decoded.expiry == 86400 and decoded.cltv_expiry == 80

            simnet.control.settle_invoice(added[1].r_hash)
            simnet.control.settle_invoice(added[3].r_hash.hex(), amt_msat=5000)
            got = await lnd.LookupInvoice(ln.PaymentHash(r_hash=added[3].r_hash))
            assert got.state == INV.SETTLED and got.settle_index == 2 and got.amt_paid_msat == 5000
            assert got.r_preimage and hashlib.sha256(got.r_preimage).digest() == got.r_hash
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await lnd.LookupInvoice(ln.PaymentHash(r_hash=os.urandom(32)))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "unable to locate invoice" in (err.value.details() or "")

            page = await lnd.ListInvoices(ln.ListInvoiceRequest(index_offset=1, num_max_invoices=2))
            assert [i.add_index for i in page.invoices] == [2, 3]
            assert (page.first_index_offset, page.last_index_offset) == (2, 3)
            pending = await lnd.ListInvoices(ln.ListInvoiceRequest(pending_only=True))
            assert [i.add_index for i in pending.invoices] == [1, 3, 5]
            rev = await lnd.ListInvoices(ln.ListInvoiceRequest(reversed=True, num_max_invoices=2))
            assert [i.add_index for i in rev.invoices] == [4, 5]
            rev2 = await lnd.ListInvoices(
                ln.ListInvoiceRequest(reversed=True, index_offset=4, num_max_invoices=2)
            )
            assert [i.add_index for i in rev2.invoices] == [2, 3]
            empty = await lnd.ListInvoices(ln.ListInvoiceRequest(index_offset=5))
            assert list(empty.invoices) == []

    asyncio.run(run())


def test_a_deleted_canceled_invoice_is_gone_from_lookups_and_lists(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, invoices, _ = stubs(ch)
            kept, doomed = [await lnd.AddInvoice(ln.Invoice(value_msat=1000, memo=f"m{i}")) for i in range(2)]
            with pytest.raises(SimnetControlError) as err:
                simnet.control.delete_invoice(doomed.r_hash)
            assert err.value.status == 400 and "invoice not canceled" in err.value.message
            await invoices.CancelInvoice(inv.CancelInvoiceMsg(payment_hash=doomed.r_hash))
            assert simnet.control.delete_invoice(doomed.r_hash)["add_index"] == doomed.add_index
            with pytest.raises(grpc.aio.AioRpcError) as lookup:
                await lnd.LookupInvoice(ln.PaymentHash(r_hash=doomed.r_hash))
            assert lookup.value.code() == grpc.StatusCode.NOT_FOUND
            listed = await lnd.ListInvoices(ln.ListInvoiceRequest(num_max_invoices=10))
            assert [i.r_hash for i in listed.invoices] == [kept.r_hash]
            with pytest.raises(SimnetControlError) as again:
                simnet.control.delete_invoice(doomed.r_hash)
            assert again.value.status == 404

    asyncio.run(run())


def test_subscribe_invoices_replay_and_live(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, _, _ = stubs(ch)
            added = [await lnd.AddInvoice(ln.Invoice(value_msat=1000)) for _ in range(4)]
            simnet.control.settle_invoice(added[0].r_hash)  # settle_index 1
            simnet.control.settle_invoice(added[2].r_hash)  # settle_index 2

            # add_index=0, settle_index=0: no replay at all, only live updates.
            live = lnd.SubscribeInvoices(ln.InvoiceSubscription())
            # Replay: adds after 2 (3 settled, 4 open) in current state, then settles after 1 (invoice 3).
            replay = lnd.SubscribeInvoices(ln.InvoiceSubscription(add_index=2, settle_index=1))
            got = await _collect(replay, 3)
            assert [(i.add_index, i.state) for i in got] == [
                (3, INV.SETTLED),
                (4, INV.OPEN),
                (3, INV.SETTLED),
            ]
            await asyncio.sleep(0.1)
            new = await lnd.AddInvoice(ln.Invoice(value_msat=7000))
            simnet.control.settle_invoice(new.r_hash)
            got_live = await _collect(live, 2)
            assert [(i.add_index, i.state, i.settle_index) for i in got_live] == [
                (5, INV.OPEN, 0),
                (5, INV.SETTLED, 3),
            ]
            more = await _collect(replay, 2)
            assert [(i.add_index, i.state) for i in more] == [(5, INV.OPEN), (5, INV.SETTLED)]
            live.cancel()
            replay.cancel()

    asyncio.run(run())


def test_replay_is_what_was_there_at_the_subscription(simnet: SimnetProc) -> None:
    """LND reads a replay from its database when the client subscribes: an invoice that
    changes before the client has read that far is replayed as it was, and a settlement
    follows as a live update; canceled invoices are not replayed."""

    async def run() -> None:
        # No BDP probing: a 64 KiB window, so simnet waits early in the replay for the client.
        async with simnet.channel(options=[("grpc.http2.bdp_probe", 0)]) as ch:
            lnd, _, invoices, _ = stubs(ch)
            simnet.control.burst_settle(1000, notify_adds=False)  # add and settle indices 1..1000
            canceled = await lnd.AddInvoice(ln.Invoice(value_msat=5000))  # add index 1001
            await invoices.CancelInvoice(inv.CancelInvoiceMsg(payment_hash=canceled.r_hash))
            paid = await lnd.AddInvoice(ln.Invoice(value_msat=5000))  # 1002
            doomed = await lnd.AddInvoice(ln.Invoice(value_msat=5000))  # 1003
            replay = lnd.SubscribeInvoices(ln.InvoiceSubscription(add_index=1, settle_index=1))
            while simnet.control.state()["subscribers"]["invoices"] == 0:
                await asyncio.sleep(0.02)
            # Mid-replay.
            simnet.control.settle_invoice(paid.r_hash)  # settle index 1001
            await invoices.CancelInvoice(inv.CancelInvoiceMsg(payment_hash=doomed.r_hash))

            got = await _collect(replay, 1001 + 999 + 1)
            adds, settles, live = got[:1001], got[1001:2000], got[2000]
            assert [i.add_index for i in adds] == [*range(2, 1001), 1002, 1003]
            assert all(i.state == INV.SETTLED for i in adds[:-2])
            assert [(i.state, i.settle_index) for i in adds[-2:]] == [(INV.OPEN, 0), (INV.OPEN, 0)]
            assert [i.settle_index for i in settles] == list(range(2, 1001))
            assert (live.add_index, live.state, live.settle_index) == (1002, INV.SETTLED, 1001)
            replay.cancel()

    asyncio.run(run())


@pytest.mark.slow
def test_a_long_replay_does_not_hold_up_other_calls(simnet: SimnetProc) -> None:
    """A daemon back after a long stop subscribes with a replay of 200,000 messages and pages
    ListInvoices meanwhile: the pages are answered at once, not after the replay is built."""
    n = 100_000

    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, _, _ = stubs(ch)
            await asyncio.to_thread(simnet.control.burst_settle, n, notify_adds=False)
            request = ln.ListInvoiceRequest(index_offset=n - 200, num_max_invoices=200)
            await lnd.ListInvoices(request)
            replay = lnd.SubscribeInvoices(ln.InvoiceSubscription(add_index=1, settle_index=1))
            slowest = 0.0
            until = time.perf_counter() + 2.0
            while time.perf_counter() < until:
                started = time.perf_counter()
                page = await lnd.ListInvoices(request)
                slowest = max(slowest, time.perf_counter() - started)
                assert len(page.invoices) == 200
            # Building the whole replay first took 1.6 s on an idle 2-core machine.
            assert slowest < 0.5, f"a ListInvoices page took {slowest:.2f} s during the replay"
            assert (await replay.read()).add_index == 2
            replay.cancel()

    asyncio.run(run())


def test_hold_invoice_and_single_subscription(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, invoices, _ = stubs(ch)
            preimage = os.urandom(32)
            r_hash = hashlib.sha256(preimage).digest()
            all_stream = lnd.SubscribeInvoices(ln.InvoiceSubscription())
            await asyncio.sleep(0.2)  # let the server register the subscription
            resp = await invoices.AddHoldInvoice(
                inv.AddHoldInvoiceRequest(hash=r_hash, value_msat=5000, memo="hold")
            )
            assert resp.add_index == 1
            single = invoices.SubscribeSingleInvoice(inv.SubscribeSingleInvoiceRequest(r_hash=r_hash))
            first = await _collect(single, 1)
            assert first[0].state == INV.OPEN
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await invoices.SettleInvoice(inv.SettleInvoiceMsg(preimage=preimage))
            assert "invoice still open" in (err.value.details() or "")
            simnet.control.settle_invoice(r_hash)
            assert (await _collect(single, 1))[0].state == INV.ACCEPTED
            await invoices.SettleInvoice(inv.SettleInvoiceMsg(preimage=preimage))
            settled = (await _collect(single, 1))[0]
            assert settled.state == INV.SETTLED and settled.r_preimage == preimage
            # The all-invoices stream saw the add and the settlement, never ACCEPTED.
            seen = await _collect(all_stream, 2)
            assert [i.state for i in seen] == [INV.OPEN, INV.SETTLED]

            # Cancel path, and expiry: LND cancels expired invoices without an all-invoices message.
            other = hashlib.sha256(b"x").digest()
            await invoices.AddHoldInvoice(inv.AddHoldInvoiceRequest(hash=other, value_msat=1000))
            await invoices.CancelInvoice(inv.CancelInvoiceMsg(payment_hash=other))
            assert (await lnd.LookupInvoice(ln.PaymentHash(r_hash=other))).state == INV.CANCELED
            short = await lnd.AddInvoice(ln.Invoice(value_msat=1000, expiry=1))
            await asyncio.sleep(1.6)
            assert (await lnd.LookupInvoice(ln.PaymentHash(r_hash=short.r_hash))).state == INV.CANCELED
            seen = await _collect(all_stream, 2)
            assert [i.state for i in seen] == [INV.OPEN, INV.OPEN]  # the two adds, no cancellations
            all_stream.cancel()
            single.cancel()

    asyncio.run(run())


def test_burst_settle_speed(simnet: SimnetProc) -> None:
    """Prints the rate at which burst settlements reach a SubscribeInvoices client (no timing assert)."""
    n = 10_000

    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, _, _ = stubs(ch)
            stream = lnd.SubscribeInvoices(ln.InvoiceSubscription())
            await asyncio.sleep(0.2)
            received = 0
            settled = 0
            first_settle = last = 0.0

            async def consume() -> None:
                nonlocal received, settled, first_settle, last
                async for item in stream:
                    received += 1
                    if item.state == INV.SETTLED:
                        settled += 1
                        if settled == 1:
                            first_settle = time.perf_counter()
                        if settled == n:
                            last = time.perf_counter()
                            return

            task = asyncio.create_task(consume())
            result = await asyncio.to_thread(simnet.control.burst_settle, n)
            await asyncio.wait_for(task, 60)
            assert received == 2 * n
            rate = n / max(last - first_settle, 1e-9)
            loop_rate = result["settle_rate"]
            print(f"\nburst {n}: simnet settle loop {loop_rate}/s, client got {rate:.0f} settlements/s")

    asyncio.run(run())
