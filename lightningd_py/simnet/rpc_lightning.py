"""lnrpc.Lightning: node info, wallet, invoices and pay-request decoding.

Channel, peer, routing and backup calls live in rpc_channels.py (mixed into the same servicer).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.simnet import bolt11
from lightningd_py.simnet.invoices import InvoiceError, hint_proto
from lightningd_py.simnet.rpc_channels import ChannelRpc

if TYPE_CHECKING:
    from lightningd_py.simnet.server import Simnet

__all__ = ["LND_VERSION", "LightningServicer"]

LND_VERSION = "0.18.3-beta commit=v0.18.3-beta"
DEFAULT_LIST_INVOICES = 100
_FEATURES = {
    0: ("data-loss-protect", True),
    5: ("upfront-shutdown-script", False),
    7: ("gossip-queries", False),
    9: ("tlv-onion", False),
    12: ("static-remote-key", True),
    14: ("payment-addr", True),
    17: ("multi-path-payments", False),
    23: ("anchors-zero-fee-htlc-tx", False),
    31: ("amp", False),
}


def feature_map(target: object) -> None:
    for bit, (name, required) in _FEATURES.items():
        target[bit].CopyFrom(ln.Feature(name=name, is_required=required, is_known=True))  # type: ignore[index]


async def invoice_abort(context: grpc.aio.ServicerContext, exc: InvoiceError) -> None:
    code = grpc.StatusCode.NOT_FOUND if exc.not_found else grpc.StatusCode.UNKNOWN
    await context.abort(code, str(exc))


class LightningServicer(ChannelRpc):
    def __init__(self, sim: Simnet) -> None:
        self.sim = sim
        self.node = sim.node

    # ---- info, wallet -------------------------------------------------------------
    async def GetInfo(
        self, request: ln.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> ln.GetInfoResponse:
        node = self.node
        chans = list(node.channels.values())
        resp = ln.GetInfoResponse(
            version=LND_VERSION,
            commit_hash="simnet",
            identity_pubkey=node.pubkey,
            alias=node.alias,
            color="#3399ff",
            num_pending_channels=sum(1 for c in chans if c.status == "pending_open"),
            num_active_channels=sum(1 for c in chans if c.status == "open" and c.active),
            num_inactive_channels=sum(1 for c in chans if c.status == "open" and not c.active),
            num_peers=sum(1 for p in node.peers.values() if p.online),
            block_height=node.block_height,
            block_hash=node.block_hash(),
            best_header_timestamp=int(time.time()),
            synced_to_chain=True,
            synced_to_graph=True,
            chains=[ln.Chain(chain="bitcoin", network=node.network)],
            uris=[f"{node.pubkey}@127.0.0.1:9735"],
        )
        feature_map(resp.features)
        return resp

    async def WalletBalance(
        self, request: ln.WalletBalanceRequest, context: grpc.aio.ServicerContext
    ) -> ln.WalletBalanceResponse:
        node = self.node
        resp = ln.WalletBalanceResponse(
            total_balance=node.wallet_confirmed_sat + node.wallet_unconfirmed_sat,
            confirmed_balance=node.wallet_confirmed_sat,
            unconfirmed_balance=node.wallet_unconfirmed_sat,
            reserved_balance_anchor_chan=10_000 if node.channels else 0,
        )
        resp.account_balance["default"].CopyFrom(
            ln.WalletAccountBalance(
                confirmed_balance=node.wallet_confirmed_sat, unconfirmed_balance=node.wallet_unconfirmed_sat
            )
        )
        return resp

    async def ChannelBalance(
        self, request: ln.ChannelBalanceRequest, context: grpc.aio.ServicerContext
    ) -> ln.ChannelBalanceResponse:
        chans = self.node.channels.values()
        local = sum(c.local_msat for c in chans if c.status == "open")
        remote = sum(c.remote_msat for c in chans if c.status == "open")
        p_local = sum(c.local_msat for c in chans if c.status == "pending_open")
        p_remote = sum(c.remote_msat for c in chans if c.status == "pending_open")
        return ln.ChannelBalanceResponse(
            balance=local // 1000,
            pending_open_balance=p_local // 1000,
            local_balance=ln.Amount(sat=local // 1000, msat=local),
            remote_balance=ln.Amount(sat=remote // 1000, msat=remote),
            unsettled_local_balance=ln.Amount(),
            unsettled_remote_balance=ln.Amount(),
            pending_open_local_balance=ln.Amount(sat=p_local // 1000, msat=p_local),
            pending_open_remote_balance=ln.Amount(sat=p_remote // 1000, msat=p_remote),
        )

    async def EstimateFee(
        self, request: ln.EstimateFeeRequest, context: grpc.aio.ServicerContext
    ) -> ln.EstimateFeeResponse:
        if not request.AddrToAmount:
            await context.abort(grpc.StatusCode.UNKNOWN, "AddrToAmount: at least one output is required")
        rate = self.node.fee_sat_per_vbyte
        if request.target_conf and request.target_conf > 6:
            rate = max(1, rate // 2)
        vbytes = 110 + 43 * len(request.AddrToAmount)
        return ln.EstimateFeeResponse(fee_sat=rate * vbytes, feerate_sat_per_byte=rate, sat_per_vbyte=rate)

    # ---- invoices -----------------------------------------------------------------
    async def AddInvoice(
        self, request: ln.Invoice, context: grpc.aio.ServicerContext
    ) -> ln.AddInvoiceResponse:
        if request.value and request.value_msat:
            await context.abort(grpc.StatusCode.UNKNOWN, "value and value_msat are mutually exclusive")
        value_msat = request.value_msat or request.value * 1000
        try:
            rec = self.node.invoices.add(
                value_msat=value_msat,
                memo=request.memo,
                expiry=request.expiry,
                preimage=request.r_preimage,
                description_hash=request.description_hash,
                cltv_expiry=request.cltv_expiry,
                private=request.private,
            )
        except InvoiceError as exc:
            await invoice_abort(context, exc)
            raise
        return ln.AddInvoiceResponse(
            r_hash=rec.r_hash,
            payment_request=rec.payment_request,
            add_index=rec.add_index,
            payment_addr=rec.payment_addr,
        )

    async def LookupInvoice(self, request: ln.PaymentHash, context: grpc.aio.ServicerContext) -> ln.Invoice:
        r_hash = request.r_hash
        if not r_hash and request.r_hash_str:
            try:
                r_hash = bytes.fromhex(request.r_hash_str)
            except ValueError:
                await context.abort(grpc.StatusCode.UNKNOWN, "r_hash_str: expected a hex payment hash")
        if len(r_hash) != 32:
            await context.abort(
                grpc.StatusCode.UNKNOWN, f"payment hash must be exactly 32 bytes, is instead {len(r_hash)}"
            )
        try:
            return self.node.invoices.lookup(r_hash).to_proto()
        except InvoiceError as exc:
            await invoice_abort(context, exc)
            raise

    async def ListInvoices(
        self, request: ln.ListInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> ln.ListInvoiceResponse:
        found, first, last = self.node.invoices.query(
            index_offset=request.index_offset,
            num_max=request.num_max_invoices or DEFAULT_LIST_INVOICES,
            pending_only=request.pending_only,
            reversed_=request.reversed,
            creation_date_start=request.creation_date_start,
            creation_date_end=request.creation_date_end,
        )
        return ln.ListInvoiceResponse(
            invoices=[r.to_proto() for r in found], first_index_offset=first, last_index_offset=last
        )

    async def SubscribeInvoices(
        self, request: ln.InvoiceSubscription, context: grpc.aio.ServicerContext
    ) -> None:
        """Writes pre-serialized Invoice messages itself: the stream that bursts."""
        reg = self.node.invoices
        sub = reg.stream.subscribe()
        write = context.write
        # Subscribed before the backlog is taken, so nothing falls between the two; the index
        # checks below drop live updates already covered by the backlog, as LND does.
        add_seen = request.add_index
        settle_seen = request.settle_index
        backlog = reg.replay(request.add_index, request.settle_index)
        if request.add_index:
            add_seen = max(add_seen, len(reg.by_add))
        if request.settle_index:
            settle_seen = max(settle_seen, len(reg.settled))
        try:
            for data in backlog:
                await write(data)
            async for add_i, settle_i, data in sub:
                if settle_i:
                    if settle_i <= settle_seen:
                        continue
                    settle_seen = settle_i
                elif add_i <= add_seen:
                    continue
                else:
                    add_seen = add_i
                await write(data)
        finally:
            backlog.close()
            sub.close()

    async def DecodePayReq(self, request: ln.PayReqString, context: grpc.aio.ServicerContext) -> ln.PayReq:
        try:
            inv = bolt11.decode(request.pay_req)
        except bolt11.Bolt11Error as exc:
            await context.abort(grpc.StatusCode.UNKNOWN, f"invalid payment request: {exc}")
            raise
        if inv.network != "bcrt":
            await context.abort(grpc.StatusCode.UNKNOWN, "invoice not for current active network 'regtest'")
        resp = ln.PayReq(
            destination=inv.payee.hex(),
            payment_hash=inv.payment_hash.hex(),
            num_satoshis=inv.amount_msat // 1000,
            timestamp=inv.timestamp,
            expiry=inv.expiry,
            description=inv.description,
            description_hash=inv.description_hash.hex(),
            fallback_addr=inv.fallback_addr,
            cltv_expiry=inv.min_final_cltv,
            payment_addr=inv.payment_secret,
            num_msat=inv.amount_msat,
            route_hints=[hint_proto(route) for route in inv.route_hints],
        )
        names = {
            8: "tlv-onion",
            9: "tlv-onion",
            14: "payment-addr",
            15: "payment-addr",
            16: "multi-path-payments",
            17: "multi-path-payments",
        }
        for bit in inv.feature_bits:
            resp.features[bit].CopyFrom(
                ln.Feature(name=names.get(bit, "unknown"), is_required=bit % 2 == 0, is_known=bit in names)
            )
        return resp

    # ---- payments -----------------------------------------------------------------
    async def ListPayments(
        self, request: ln.ListPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> ln.ListPaymentsResponse:
        engine = self.sim.payments
        found, first, last = engine.query(
            index_offset=request.index_offset,
            max_payments=request.max_payments,
            include_incomplete=request.include_incomplete,
            reversed_=request.reversed,
            start=request.creation_date_start,
            end=request.creation_date_end,
        )
        resp = ln.ListPaymentsResponse(
            payments=[p.to_proto() for p in found], first_index_offset=first, last_index_offset=last
        )
        if request.count_total_payments:
            resp.total_num_payments = len(engine.payments)
        return resp
