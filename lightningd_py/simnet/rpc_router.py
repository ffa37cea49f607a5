"""routerrpc.Router: SendPaymentV2, TrackPaymentV2, TrackPayments, SubscribeHtlcEvents, fees."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2 as rt
from lightningd_py.simnet import bolt11
from lightningd_py.simnet.invoices import InvoiceError
from lightningd_py.simnet.payments import RouteError

if TYPE_CHECKING:
    from lightningd_py.simnet.server import Simnet

__all__ = ["RouterServicer"]

S = ln.Payment
KEYSEND_RECORD = 5482373484


class RouterServicer:
    def __init__(self, sim: Simnet) -> None:
        self.sim = sim
        self.node = sim.node
        self.engine = sim.payments

    async def SendPaymentV2(
        self, request: rt.SendPaymentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.Payment]:
        if request.timeout_seconds <= 0:
            await context.abort(grpc.StatusCode.UNKNOWN, "timeout_seconds must be specified")
        if request.fee_limit_sat and request.fee_limit_msat:
            await context.abort(grpc.StatusCode.UNKNOWN, "sat and msat arguments are mutually exclusive")
        if request.amt and request.amt_msat:
            await context.abort(grpc.StatusCode.UNKNOWN, "sat and msat arguments are mutually exclusive")
        amt = request.amt_msat or request.amt * 1000
        if request.payment_request:
            try:
                inv = bolt11.decode(request.payment_request)
            except bolt11.Bolt11Error as exc:
                await context.abort(grpc.StatusCode.UNKNOWN, f"invalid payment request: {exc}")
                raise
            if inv.network != "bcrt":
                await context.abort(
                    grpc.StatusCode.UNKNOWN, "invoice not for current active network 'regtest'"
                )
            if inv.amount_msat and amt:
                await context.abort(
                    grpc.StatusCode.UNKNOWN,
                    "amount must not be specified when paying a non-zero  amount invoice",
                )
            if not inv.amount_msat and not amt:
                await context.abort(
                    grpc.StatusCode.UNKNOWN, "amount must be specified when paying a zero amount invoice"
                )
            amt = inv.amount_msat or amt
            dest, payment_hash, final_cltv = inv.payee.hex(), inv.payment_hash, inv.min_final_cltv
        else:
            if len(request.dest) != 33:
                await context.abort(grpc.StatusCode.UNKNOWN, "dest: expected a 33-byte public key")
            if len(request.payment_hash) != 32:
                await context.abort(grpc.StatusCode.UNKNOWN, "payment_hash: expected 32 bytes")
            if amt <= 0:
                await context.abort(grpc.StatusCode.UNKNOWN, "amount must be greater than zero")
            dest, payment_hash = request.dest.hex(), request.payment_hash
            final_cltv = request.final_cltv_delta or 40
            # Keysend: the preimage travels in the onion, so the (simulated) payee can claim it.
            preimage = request.dest_custom_records.get(KEYSEND_RECORD, b"")
            if preimage and hashlib.sha256(preimage).digest() == payment_hash and dest != self.node.pubkey:
                self.engine.external_preimages[payment_hash] = preimage
        chan_ids = list(request.outgoing_chan_ids)
        if request.outgoing_chan_id:
            chan_ids.append(request.outgoing_chan_id)
        updates = self.engine.updates.subscribe()
        try:
            rec = self.engine.start_payment(
                payment_hash=payment_hash,
                amt_msat=amt,
                dest=dest,
                payment_request=request.payment_request,
                fee_limit_msat=request.fee_limit_msat or request.fee_limit_sat * 1000,
                timeout_seconds=request.timeout_seconds,
                outgoing_chan_ids=chan_ids,
                last_hop_pubkey=request.last_hop_pubkey.hex(),
                allow_self_payment=request.allow_self_payment,
                final_cltv=final_cltv,
            )
        except InvoiceError as exc:
            updates.close()
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
            raise
        # Subscribed before the payment started: the creation update is already queued.
        async for item in self._follow(rec.payment_hash, updates, request.no_inflight_updates, None):
            yield item

    async def _follow(
        self,
        payment_hash: bytes,
        updates: AsyncIterator[tuple[bytes, ln.Payment]],
        no_inflight: bool,
        first: ln.Payment | None,
    ) -> AsyncIterator[ln.Payment]:
        if first is not None:
            if not (no_inflight and first.status == S.IN_FLIGHT):
                yield first
            if first.status != S.IN_FLIGHT:
                return
        async for update_hash, update in updates:
            if update_hash != payment_hash:
                continue
            if no_inflight and update.status == S.IN_FLIGHT:
                continue
            yield update
            if update.status != S.IN_FLIGHT:
                return

    async def TrackPaymentV2(
        self, request: rt.TrackPaymentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.Payment]:
        rec = self.engine.by_hash.get(request.payment_hash)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "payment isn't initiated")
            raise AssertionError
        updates = self.engine.updates.subscribe()
        first = rec.to_proto()
        async for item in self._follow(rec.payment_hash, updates, request.no_inflight_updates, first):
            yield item

    async def TrackPayments(
        self, request: rt.TrackPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ln.Payment]:
        async for _hash, payment in self.engine.updates.subscribe():
            if request.no_inflight_updates and payment.status == S.IN_FLIGHT:
                continue
            yield payment

    async def SubscribeHtlcEvents(
        self, request: rt.SubscribeHtlcEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rt.HtlcEvent]:
        sub = self.node.htlc_events.subscribe()
        # LND confirms the subscription with a SubscribedEvent before any HTLC event.
        first = rt.HtlcEvent()
        first.subscribed_event.SetInParent()
        yield first
        async for event in sub:
            yield event

    async def EstimateRouteFee(
        self, request: rt.RouteFeeRequest, context: grpc.aio.ServicerContext
    ) -> rt.RouteFeeResponse:
        if len(request.dest) != 33:
            await context.abort(grpc.StatusCode.UNKNOWN, "dest: expected a 33-byte public key")
        try:
            route = self.engine.build_route(dest=request.dest.hex(), amt_msat=request.amt_sat * 1000)
        except RouteError as exc:
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
            raise
        return rt.RouteFeeResponse(
            routing_fee_msat=route.total_fees_msat, time_lock_delay=route.total_time_lock
        )

    async def SendToRouteV2(
        self, request: rt.SendToRouteRequest, context: grpc.aio.ServicerContext
    ) -> ln.HTLCAttempt:
        if len(request.payment_hash) != 32:
            await context.abort(grpc.StatusCode.UNKNOWN, "payment_hash: expected 32 bytes")
        try:
            route = self.engine.route_from_proto(request.route)
            return await self.engine.send_to_route(request.payment_hash, route)
        except RouteError as exc:
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
            raise
        except InvoiceError as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
            raise
