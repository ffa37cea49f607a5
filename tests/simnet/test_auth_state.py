"""Macaroon permissions, RPC state gating, lock/unlock and restarts, over real gRPC+TLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from lightningd_py.lnd.rpc import invoices_pb2 as inv
from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2 as rt
from lightningd_py.lnd.rpc import stateservice_pb2 as st
from lightningd_py.simnet.control import SimnetControlError
from lightningd_py.simnet.macaroons import ADMIN_OPS, MacaroonKeeper

from .conftest import SimnetProc, start_simnet, stubs


async def _error(coro: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro  # type: ignore[misc]
    return err.value


def test_macaroon_permissions(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel("invoice") as ch:
            lnd, router, invoices, _ = stubs(ch)
            added = await lnd.AddInvoice(ln.Invoice(value_msat=1000))
            assert (await lnd.LookupInvoice(ln.PaymentHash(r_hash=added.r_hash))).add_index == 1
            await lnd.WalletBalance(ln.WalletBalanceRequest())  # onchain:read is in invoice.macaroon
            for call in (
                lnd.GetInfo(ln.GetInfoRequest()),
                lnd.ListChannels(ln.ListChannelsRequest()),
                lnd.ListPayments(ln.ListPaymentsRequest()),
            ):
                err = await _error(call)
                assert err.code() == grpc.StatusCode.UNKNOWN and err.details() == "permission denied"
        async with simnet.channel("readonly") as ch:
            lnd, router, invoices, _ = stubs(ch)
            await lnd.GetInfo(ln.GetInfoRequest())
            await lnd.ListInvoices(ln.ListInvoiceRequest())
            await lnd.ListChannels(ln.ListChannelsRequest())
            for call in (
                lnd.AddInvoice(ln.Invoice(value_msat=1)),
                invoices.CancelInvoice(inv.CancelInvoiceMsg(payment_hash=b"\x00" * 32)),
            ):
                err = await _error(call)
                assert err.code() == grpc.StatusCode.UNKNOWN and err.details() == "permission denied"
            stream = router.SendPaymentV2(rt.SendPaymentRequest(payment_request="x", timeout_seconds=5))
            err = await _error(stream.read())
            assert err.details() == "permission denied"
        async with simnet.channel(None) as ch:
            lnd, _, _, state = stubs(ch)
            err = await _error(lnd.GetInfo(ln.GetInfoRequest()))
            assert err.code() == grpc.StatusCode.UNKNOWN and err.details() == "expected 1 macaroon, got 0"
            # The State service needs no macaroon.
            assert (await state.GetState(st.GetStateRequest())).state == st.SERVER_ACTIVE
            # A macaroon from another root key fails signature verification.
            foreign = MacaroonKeeper(Path(simnet.info["lnddir"]).parent / "other").bake(ADMIN_OPS).hex()
            err = await _error(lnd.GetInfo(ln.GetInfoRequest(), metadata=(("macaroon", foreign),)))
            assert err.details() == "verification failed: signature mismatch after caveat verification"

    asyncio.run(run())


def test_locked_start_unlock_and_states(tmp_path: Path) -> None:
    sim = start_simnet(tmp_path, "--locked")
    try:

        async def run() -> None:
            async with sim.channel() as ch:
                lnd, _, _, state = stubs(ch)
                assert (await state.GetState(st.GetStateRequest())).state == st.LOCKED
                err = await _error(lnd.GetInfo(ln.GetInfoRequest()))
                assert err.code() == grpc.StatusCode.UNKNOWN
                assert err.details() == "wallet locked, unlock it to enable full RPC access"
                states = state.SubscribeState(st.SubscribeStateRequest())
                assert (await states.read()).state == st.LOCKED
                await asyncio.to_thread(sim.control.unlock)
                seen = [(await states.read()).state for _ in range(3)]
                assert seen == [st.UNLOCKED, st.RPC_ACTIVE, st.SERVER_ACTIVE]
                assert (await lnd.GetInfo(ln.GetInfoRequest())).synced_to_chain
                states.cancel()

        asyncio.run(run())
    finally:
        sim.proc.terminate()
        sim.proc.wait(10)


def test_restart_ends_streams_ok_and_comes_back(simnet: SimnetProc) -> None:
    cert_path = Path(simnet.info["tls_cert"])
    cert_before = cert_path.read_bytes()

    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, router, _, state = stubs(ch)
            added = await lnd.AddInvoice(ln.Invoice(value_msat=1000))
            streams = [
                lnd.SubscribeInvoices(ln.InvoiceSubscription()),
                lnd.SubscribeChannelEvents(ln.ChannelEventSubscription()),
                router.SubscribeHtlcEvents(rt.SubscribeHtlcEventsRequest()),
                state.SubscribeState(st.SubscribeStateRequest()),
            ]
            await asyncio.sleep(0.2)
            await asyncio.to_thread(simnet.control.restart, 0.5, True)

            async def drain(call: object) -> grpc.StatusCode:
                async for _ in call:  # type: ignore[attr-defined]
                    pass
                return await call.code()  # type: ignore[attr-defined]

            codes = await asyncio.wait_for(asyncio.gather(*(drain(s) for s in streams)), 5)
            assert codes == [grpc.StatusCode.OK] * 4
        # While down, connections are refused.
        async with simnet.channel() as ch:
            lnd, _, _, state = stubs(ch)
            err = await _error(lnd.GetInfo(ln.GetInfoRequest(), timeout=1))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(1.0)
        cert_now = await asyncio.to_thread(cert_path.read_bytes)
        assert cert_now != cert_before  # regenerated; clients re-read it on reconnect
        async with simnet.channel() as ch:
            lnd, _, _, state = stubs(ch)
            for _ in range(50):
                if (await state.GetState(st.GetStateRequest())).state == st.SERVER_ACTIVE:
                    break
                await asyncio.sleep(0.05)
            got = await lnd.LookupInvoice(ln.PaymentHash(r_hash=added.r_hash))  # same state as before
            assert got.add_index == 1

    asyncio.run(run())


def test_rpc_starting_message_during_restart(simnet: SimnetProc) -> None:
    async def run() -> None:
        await asyncio.to_thread(simnet.control.restart, 0.1, False, True, True)  # come back LOCKED, wait
        async with simnet.channel() as ch:
            lnd, _, _, state = stubs(ch)
            assert (await state.GetState(st.GetStateRequest())).state == st.LOCKED
            err = await _error(lnd.GetInfo(ln.GetInfoRequest()))
            assert "wallet locked" in (err.details() or "")
            await asyncio.to_thread(simnet.control.unlock)
            assert (await state.GetState(st.GetStateRequest())).state == st.SERVER_ACTIVE

    asyncio.run(run())


def test_held_calls_wait_until_released(simnet: SimnetProc) -> None:
    async def run() -> None:
        async with simnet.channel() as ch:
            lnd, _, _, _ = stubs(ch)
            for _ in range(3):
                await lnd.AddInvoice(ln.Invoice(value_msat=1000))
            held = await asyncio.to_thread(simnet.control.hold_calls, "ListInvoices", 1)
            assert held["held"] == {"ListInvoices": {"after": 1, "passed": 0, "waiting": 0}}
            first = await lnd.ListInvoices(ln.ListInvoiceRequest(num_max_invoices=1))
            assert [i.add_index for i in first.invoices] == [1]
            second = asyncio.ensure_future(lnd.ListInvoices(ln.ListInvoiceRequest(index_offset=1)))
            for _ in range(100):
                state = await asyncio.to_thread(simnet.control.state)
                if state["held_calls"]["ListInvoices"]["waiting"] == 1:
                    break
                await asyncio.sleep(0.02)
            assert state["held_calls"]["ListInvoices"] == {"after": 1, "passed": 1, "waiting": 1}
            # Other methods go through, and what happens meanwhile is in the held answer.
            await lnd.AddInvoice(ln.Invoice(value_msat=2000))
            assert not second.done()
            released = await asyncio.to_thread(simnet.control.release_calls, "ListInvoices")
            assert released == {"released": 1, "held": {}}
            page = await asyncio.wait_for(second, 5)
            assert [i.add_index for i in page.invoices] == [2, 3, 4]
            assert (await asyncio.to_thread(simnet.control.state))["held_calls"] == {}

    asyncio.run(run())


def test_hold_names_the_method_it_expects(simnet: SimnetProc) -> None:
    with pytest.raises(SimnetControlError) as err:
        simnet.control.hold_calls("SubscribeInvoices")
    assert err.value.status == 400
    assert "method: expected the name of a unary RPC such as 'ListInvoices', got 'SubscribeInvoices'" in str(
        err.value
    )
