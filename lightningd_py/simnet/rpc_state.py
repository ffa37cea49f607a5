"""lnrpc.State (no macaroon) and invoicesrpc.Invoices (hold invoices, single-invoice streams)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from lightningd_py.lnd.rpc import invoices_pb2 as inv
from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import stateservice_pb2 as st
from lightningd_py.simnet.hub import Hub
from lightningd_py.simnet.invoices import InvoiceError
from lightningd_py.simnet.rpc_lightning import invoice_abort

if TYPE_CHECKING:
    from lightningd_py.simnet.server import Simnet

__all__ = ["InvoicesServicer", "StateServicer"]


class StateServicer:
    def __init__(self, sim: Simnet) -> None:
        self.node = sim.node

    async def GetState(
        self, request: st.GetStateRequest, context: grpc.aio.ServicerContext
    ) -> st.GetStateResponse:
        return st.GetStateResponse(state=self.node.state)

    async def SubscribeState(
        self, request: st.SubscribeStateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[st.SubscribeStateResponse]:
        sub = self.node.state_hub.subscribe()
        yield st.SubscribeStateResponse(state=self.node.state)
        async for state in sub:
            yield st.SubscribeStateResponse(state=state)


class InvoicesServicer:
    def __init__(self, sim: Simnet) -> None:
        self.node = sim.node

    async def AddHoldInvoice(
        self, request: inv.AddHoldInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> inv.AddHoldInvoiceResp:
        if request.value and request.value_msat:
            await context.abort(grpc.StatusCode.UNKNOWN, "value and value_msat are mutually exclusive")
        try:
            rec = self.node.invoices.add(
                value_msat=request.value_msat or request.value * 1000,
                memo=request.memo,
                expiry=request.expiry,
                payment_hash=request.hash,
                description_hash=request.description_hash,
                cltv_expiry=request.cltv_expiry,
                private=request.private,
                hold=True,
            )
        except InvoiceError as exc:
            await invoice_abort(context, exc)
            raise
        return inv.AddHoldInvoiceResp(
            payment_request=rec.payment_request, add_index=rec.add_index, payment_addr=rec.payment_addr
        )

    async def SettleInvoice(
        self, request: inv.SettleInvoiceMsg, context: grpc.aio.ServicerContext
    ) -> inv.SettleInvoiceResp:
        try:
            rec = self.node.invoices.settle_hold(request.preimage)
        except InvoiceError as exc:
            await invoice_abort(context, exc)
            raise
        held = self.node.held_htlcs.pop(rec.r_hash, None)
        chan = self.node.channels.get(held[0]) if held else None
        if held is not None and chan is not None:
            chan.remote_msat -= held[1]
            chan.local_msat += held[1]
            chan.received_msat += held[1]
        return inv.SettleInvoiceResp()

    async def CancelInvoice(
        self, request: inv.CancelInvoiceMsg, context: grpc.aio.ServicerContext
    ) -> inv.CancelInvoiceResp:
        try:
            self.node.invoices.cancel(request.payment_hash)
        except InvoiceError as exc:
            await invoice_abort(context, exc)
        self.node.held_htlcs.pop(request.payment_hash, None)
        return inv.CancelInvoiceResp()

    async def LookupInvoiceV2(
        self, request: inv.LookupInvoiceMsg, context: grpc.aio.ServicerContext
    ) -> ln.Invoice:
        reg = self.node.invoices
        try:
            if request.payment_hash:
                return reg.lookup(request.payment_hash).to_proto()
            for rec in reg.by_add:
                if request.payment_addr and rec.payment_addr == request.payment_addr:
                    return rec.to_proto()
            raise InvoiceError("unable to locate invoice", not_found=True)
        except InvoiceError as exc:
            await invoice_abort(context, exc)
            raise

    async def SubscribeSingleInvoice(
        self, request: inv.SubscribeSingleInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        reg = self.node.invoices
        if len(request.r_hash) != 32:
            await context.abort(grpc.StatusCode.UNKNOWN, "invalid hash length")
        hub = reg.single.get(request.r_hash)
        if hub is None:
            hub = reg.single[request.r_hash] = Hub()
        sub = hub.subscribe()
        try:
            # LND sends the current state first (when the invoice exists), then every change.
            rec = reg.by_hash.get(request.r_hash)
            if rec is not None:
                yield rec.to_proto().SerializeToString()
            async for data in sub:
                yield data
        finally:
            sub.close()
            if not len(hub) and reg.single.get(request.r_hash) is hub:
                del reg.single[request.r_hash]
