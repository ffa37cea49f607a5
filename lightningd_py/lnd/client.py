"""Typed calls to LND: ``LndClient``.

Every method sends one gRPC request with a deadline, converts the answer to the plain
Structs of ``lightningd_py.lnd.types`` and raises ``LndError`` (classified, raised
``from`` the gRPC error) on failure. Arguments are checked before any call: a bad one
raises ``ValueError`` naming the parameter.

The client owned by ``LndLink`` is usable at any time: while there is no active
connection its calls fail at once with an ``LndError`` whose kind says why
(``"unreachable"``, ``"locked"`` or ``"starting"``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ..errors import LndError
from .errors import classify, unreachable
from .rpc import invoices_pb2, router_pb2
from .rpc import lightning_pb2 as ln
from .types import (
    AddedInvoice,
    ChanBackup,
    Channel,
    ChannelBalance,
    ChannelFee,
    ClosedChannel,
    FeeReport,
    ForwardingEvent,
    ForwardPage,
    HtlcAttempt,
    Invoice,
    InvoicePage,
    LightningNode,
    NodeAddress,
    NodeInfo,
    Payment,
    PaymentPage,
    PayReq,
    Peer,
    PendingChannel,
    PendingChannels,
    RouteHop,
    SingleChanBackup,
    WalletBalance,
)

if TYPE_CHECKING:
    from .link import Stubs

__all__ = [
    "PAYMENT_DEADLINE_MARGIN",
    "LndClient",
    "PaymentUpdateCallback",
    "invoice_from_proto",
    "payment_from_proto",
]

PAYMENT_DEADLINE_MARGIN = 15.0
"""Seconds added to a payment's ``timeout_seconds`` for the SendPaymentV2 deadline:
LND stops trying new routes at the timeout but may still be resolving HTLCs."""

PaymentUpdateCallback = Callable[[Payment], "Awaitable[None] | None"]

_T = TypeVar("_T")

# Network names GetInfo reports -> bech32 prefix; used to give EstimateFee an address.
_HRP = {
    "mainnet": "bc",
    "testnet": "tb",
    "testnet3": "tb",
    "testnet4": "tb",
    "signet": "tb",
    "regtest": "bcrt",
    "simnet": "sb",
}


# ---------------------------------------------------------------- argument checks


def _hex_bytes(name: str, value: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a hex string, got {type(value).__name__}")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{name}: not a hex string") from None
    if length is not None and len(raw) != length:
        raise ValueError(f"{name}: expected {length * 2} hex characters ({length} bytes), got {len(value)}")
    return raw


def _pubkey(name: str, value: str) -> bytes:
    raw = _hex_bytes(name, value, 33)
    if raw[0] not in (2, 3):
        raise ValueError(f"{name}: not a compressed public key (must start with 02 or 03)")
    return raw


def _int(name: str, value: int, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {value}")
    return value


def _channel_point(name: str, value: str) -> ln.ChannelPoint:
    txid, sep, index = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not index.isdigit():
        raise ValueError(f"{name}: expected 'funding_txid:output_index'")
    _hex_bytes(name, txid, 32)
    return ln.ChannelPoint(funding_txid_str=txid.lower(), output_index=int(index))


# ---------------------------------------------------------------- conversions


def _enum(enum_type: Any, value: int) -> str:
    try:
        return str(enum_type.Name(value))
    except ValueError:
        # A value newer than our protos: keep the number rather than fail.
        return str(value)


def _point_str(point: ln.ChannelPoint) -> str:
    if point.WhichOneof("funding_txid") == "funding_txid_bytes":
        txid = point.funding_txid_bytes[::-1].hex()
    else:
        txid = point.funding_txid_str
    return f"{txid}:{point.output_index}"


def _node_info(msg: ln.GetInfoResponse) -> NodeInfo:
    chain = msg.chains[0] if len(msg.chains) else None
    return NodeInfo(
        pubkey=msg.identity_pubkey,
        alias=msg.alias,
        color=msg.color,
        version=msg.version,
        commit_hash=msg.commit_hash,
        num_active_channels=msg.num_active_channels,
        num_inactive_channels=msg.num_inactive_channels,
        num_pending_channels=msg.num_pending_channels,
        num_peers=msg.num_peers,
        block_height=msg.block_height,
        block_hash=msg.block_hash,
        best_header_timestamp=msg.best_header_timestamp,
        synced_to_chain=msg.synced_to_chain,
        synced_to_graph=msg.synced_to_graph,
        chain=chain.chain if chain else "",
        network=chain.network if chain else "",
        uris=list(msg.uris),
    )


def invoice_from_proto(msg: ln.Invoice) -> Invoice:
    """Convert an ``lnrpc.Invoice`` (also used by the stream readers)."""
    return Invoice(
        payment_hash=msg.r_hash.hex(),
        preimage=msg.r_preimage.hex(),
        state=_enum(ln.Invoice.InvoiceState, msg.state),
        value_msat=msg.value_msat,
        amt_paid_msat=msg.amt_paid_msat,
        creation_date=msg.creation_date,
        expiry=msg.expiry,
        settle_date=msg.settle_date,
        add_index=msg.add_index,
        settle_index=msg.settle_index,
        memo=msg.memo,
        payment_request=msg.payment_request,
        description_hash=msg.description_hash.hex(),
        payment_addr=msg.payment_addr.hex(),
        cltv_expiry=msg.cltv_expiry,
        is_keysend=msg.is_keysend,
        is_amp=msg.is_amp,
        private=msg.private,
        htlcs=len(msg.htlcs),
    )


def payment_from_proto(msg: ln.Payment) -> Payment:
    """Convert an ``lnrpc.Payment`` (also used by the stream readers)."""
    attempts = []
    for htlc in msg.htlcs:
        failed = htlc.HasField("failure")
        attempts.append(
            HtlcAttempt(
                attempt_id=htlc.attempt_id,
                status=_enum(ln.HTLCAttempt.HTLCStatus, htlc.status),
                attempt_time_ns=htlc.attempt_time_ns,
                resolve_time_ns=htlc.resolve_time_ns,
                total_amt_msat=htlc.route.total_amt_msat,
                total_fees_msat=htlc.route.total_fees_msat,
                total_time_lock=htlc.route.total_time_lock,
                hops=[
                    RouteHop(
                        chan_id=hop.chan_id,
                        pubkey=hop.pub_key,
                        fee_msat=hop.fee_msat,
                        amt_to_forward_msat=hop.amt_to_forward_msat,
                        expiry=hop.expiry,
                    )
                    for hop in htlc.route.hops
                ],
                failure_code=_enum(ln.Failure.FailureCode, htlc.failure.code) if failed else "",
                failure_source_index=htlc.failure.failure_source_index if failed else 0,
            )
        )
    return Payment(
        payment_hash=msg.payment_hash,
        payment_preimage=msg.payment_preimage,
        value_msat=msg.value_msat,
        fee_msat=msg.fee_msat,
        status=_enum(ln.Payment.PaymentStatus, msg.status),
        failure_reason=_enum(ln.PaymentFailureReason, msg.failure_reason),
        payment_index=msg.payment_index,
        creation_time_ns=msg.creation_time_ns,
        payment_request=msg.payment_request,
        htlcs=attempts,
    )


def _channel(msg: ln.Channel) -> Channel:
    return Channel(
        chan_id=msg.chan_id,
        channel_point=msg.channel_point,
        remote_pubkey=msg.remote_pubkey,
        capacity_sat=msg.capacity,
        local_balance_sat=msg.local_balance,
        remote_balance_sat=msg.remote_balance,
        active=msg.active,
        private=msg.private,
        initiator=msg.initiator,
        num_pending_htlcs=len(msg.pending_htlcs),
        total_satoshis_sent=msg.total_satoshis_sent,
        total_satoshis_received=msg.total_satoshis_received,
        uptime=msg.uptime,
        lifetime=msg.lifetime,
        peer_alias=msg.peer_alias,
        # The top-level reserve fields are deprecated in favour of the constraints.
        local_chan_reserve_sat=msg.local_constraints.chan_reserve_sat or msg.local_chan_reserve_sat,
        remote_chan_reserve_sat=msg.remote_constraints.chan_reserve_sat or msg.remote_chan_reserve_sat,
        commit_fee=msg.commit_fee,
        unsettled_balance_sat=msg.unsettled_balance,
        commitment_type=_enum(ln.CommitmentType, msg.commitment_type),
    )


def _pending(
    msg: ln.PendingChannelsResponse.PendingChannel,
    closing_txid: str = "",
    limbo_balance_sat: int = 0,
    blocks_til_maturity: int = 0,
) -> PendingChannel:
    return PendingChannel(
        channel_point=msg.channel_point,
        remote_pubkey=msg.remote_node_pub,
        capacity_sat=msg.capacity,
        local_balance_sat=msg.local_balance,
        remote_balance_sat=msg.remote_balance,
        initiator=_enum(ln.Initiator, msg.initiator),
        private=msg.private,
        closing_txid=closing_txid,
        limbo_balance_sat=limbo_balance_sat,
        blocks_til_maturity=blocks_til_maturity,
    )


def _closed(msg: ln.ChannelCloseSummary) -> ClosedChannel:
    return ClosedChannel(
        channel_point=msg.channel_point,
        chan_id=msg.chan_id,
        remote_pubkey=msg.remote_pubkey,
        capacity_sat=msg.capacity,
        close_height=msg.close_height,
        settled_balance_sat=msg.settled_balance,
        time_locked_balance_sat=msg.time_locked_balance,
        close_type=_enum(ln.ChannelCloseSummary.ClosureType, msg.close_type),
        closing_tx_hash=msg.closing_tx_hash,
        open_initiator=_enum(ln.Initiator, msg.open_initiator),
        close_initiator=_enum(ln.Initiator, msg.close_initiator),
    )


def _segwit_v0_address(hrp: str, program: bytes) -> str:
    """BIP 173 encoding of a version 0 witness program."""
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    # Regroup 8-bit bytes into 5-bit words, witness version 0 first.
    words = [0]
    acc = bits = 0
    for byte in program:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            words.append((acc >> bits) & 31)
    if bits:
        words.append((acc << (5 - bits)) & 31)
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    values = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + words + [0] * 6
    chk = 1
    for value in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= generator[i]
    polymod = chk ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(charset[w] for w in words + checksum)


def _task_cancelled() -> bool:
    """Whether the current task is being cancelled (as opposed to a gRPC call of it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _closed_under_call() -> LndError:
    # grpc.aio raises CancelledError in the caller when the channel is closed under a
    # call (the link reconnecting); that is a lost connection, not a cancelled caller.
    return LndError("UNAVAILABLE", "the connection to LND closed during the call", "unreachable")


# ---------------------------------------------------------------- the client


class LndClient:
    """Typed async calls to LND.

    :param stubs: the connected stubs, or None for a client that is not connected yet.
    :param rpc_timeout: the per-call deadline in seconds.
    :param unavailable: builds the error raised while not connected (the link passes
        one that says why: unreachable, locked or starting).
    """

    def __init__(
        self,
        stubs: Stubs | None = None,
        rpc_timeout: float = 30.0,
        *,
        unavailable: Callable[[], LndError] | None = None,
    ) -> None:
        self._stubs = stubs
        self._rpc_timeout = float(rpc_timeout)
        self._unavailable = unavailable or (lambda: unreachable("not connected to LND"))
        self._network: str | None = None
        self.observers: list[Callable[[str, float], None]] = []
        """Called with (RPC name, seconds) after every unary call, failed ones included."""

    @classmethod
    def from_stubs(cls, stubs: Stubs, rpc_timeout: float = 30.0) -> LndClient:
        """A client on already connected stubs (e.g. those ``on_active`` receives)."""
        return cls(stubs, rpc_timeout)

    @property
    def connected(self) -> bool:
        """Whether calls go to LND (False: they raise at once)."""
        return self._stubs is not None

    @property
    def rpc_timeout(self) -> float:
        return self._rpc_timeout

    def attach(self, stubs: Stubs | None) -> None:
        """Point the client at new stubs (the link does this on (re)connect), or at
        None to make calls fail at once."""
        self._stubs = stubs
        self._network = None

    def _require(self) -> Stubs:
        stubs = self._stubs
        if stubs is None:
            raise self._unavailable()
        return stubs

    async def _call(
        self, method: Callable[..., Awaitable[_T]], request: Any, deadline: float | None = None
    ) -> _T:
        started = time.perf_counter()
        try:
            return await method(request, timeout=self._rpc_timeout if deadline is None else deadline)
        except (grpc.RpcError, grpc.aio.UsageError) as exc:
            raise classify(exc) from exc
        except asyncio.CancelledError:
            if _task_cancelled():
                raise
            raise _closed_under_call() from None
        finally:
            if self.observers:
                elapsed = time.perf_counter() - started
                name = _rpc_name(method, request)
                for observe in self.observers:
                    observe(name, elapsed)

    async def _stream_until(
        self,
        method: Callable[..., Any],
        request: Any,
        deadline: float,
        accept: Callable[[Any], Awaitable[_T | None]],
    ) -> _T | None:
        """Read a server stream until ``accept`` returns a value; the call is
        cancelled once this returns (LND carries on with what it started)."""
        call = None
        try:
            call = method(request, timeout=deadline)
            async for message in call:
                result = await accept(message)
                if result is not None:
                    return result
            return None
        except (grpc.RpcError, grpc.aio.UsageError) as exc:
            raise classify(exc) from exc
        except asyncio.CancelledError:
            if _task_cancelled():
                raise
            raise _closed_under_call() from None
        finally:
            if call is not None:
                call.cancel()

    # ------------------------------------------------------------ node

    async def get_info(self) -> NodeInfo:
        stubs = self._require()
        msg = await self._call(stubs.lightning.GetInfo, ln.GetInfoRequest())
        return _node_info(msg)

    async def wallet_balance(self) -> WalletBalance:
        stubs = self._require()
        msg = await self._call(stubs.lightning.WalletBalance, ln.WalletBalanceRequest())
        return WalletBalance(
            total_balance_sat=msg.total_balance,
            confirmed_balance_sat=msg.confirmed_balance,
            unconfirmed_balance_sat=msg.unconfirmed_balance,
            locked_balance_sat=msg.locked_balance,
            reserved_balance_anchor_chan_sat=msg.reserved_balance_anchor_chan,
        )

    async def channel_balance(self) -> ChannelBalance:
        stubs = self._require()
        msg = await self._call(stubs.lightning.ChannelBalance, ln.ChannelBalanceRequest())
        return ChannelBalance(
            local_balance_msat=msg.local_balance.msat,
            remote_balance_msat=msg.remote_balance.msat,
            unsettled_local_balance_msat=msg.unsettled_local_balance.msat,
            unsettled_remote_balance_msat=msg.unsettled_remote_balance.msat,
            pending_open_local_balance_msat=msg.pending_open_local_balance.msat,
            pending_open_remote_balance_msat=msg.pending_open_remote_balance.msat,
        )

    # ------------------------------------------------------------ invoices

    async def add_invoice(
        self,
        value_msat: int,
        memo: str = "",
        expiry: int = 3600,
        private: bool = False,
        description_hash: str | None = None,
    ) -> AddedInvoice:
        _int("value_msat", value_msat)
        _int("expiry", expiry, 1)
        dh = _hex_bytes("description_hash", description_hash, 32) if description_hash else b""
        if len(memo.encode()) > 639:
            raise ValueError("memo: at most 639 bytes (BOLT 11 description limit)")
        stubs = self._require()
        msg = await self._call(
            stubs.lightning.AddInvoice,
            ln.Invoice(value_msat=value_msat, memo=memo, expiry=expiry, private=private, description_hash=dh),
        )
        return AddedInvoice(
            payment_hash=msg.r_hash.hex(),
            payment_request=msg.payment_request,
            add_index=msg.add_index,
            payment_addr=msg.payment_addr.hex(),
        )

    async def add_hold_invoice(
        self, payment_hash: str, value_msat: int, memo: str = "", expiry: int = 3600
    ) -> AddedInvoice:
        raw_hash = _hex_bytes("payment_hash", payment_hash, 32)
        _int("value_msat", value_msat)
        _int("expiry", expiry, 1)
        if len(memo.encode()) > 639:
            raise ValueError("memo: at most 639 bytes (BOLT 11 description limit)")
        stubs = self._require()
        msg = await self._call(
            stubs.invoices.AddHoldInvoice,
            invoices_pb2.AddHoldInvoiceRequest(
                hash=raw_hash, value_msat=value_msat, memo=memo, expiry=expiry
            ),
        )
        return AddedInvoice(
            payment_hash=raw_hash.hex(),
            payment_request=msg.payment_request,
            add_index=msg.add_index,
            payment_addr=msg.payment_addr.hex(),
        )

    async def settle_invoice(self, preimage: str) -> None:
        raw = _hex_bytes("preimage", preimage, 32)
        stubs = self._require()
        await self._call(stubs.invoices.SettleInvoice, invoices_pb2.SettleInvoiceMsg(preimage=raw))

    async def cancel_invoice(self, payment_hash: str) -> None:
        raw = _hex_bytes("payment_hash", payment_hash, 32)
        stubs = self._require()
        await self._call(stubs.invoices.CancelInvoice, invoices_pb2.CancelInvoiceMsg(payment_hash=raw))

    async def lookup_invoice(self, payment_hash: str) -> Invoice:
        raw = _hex_bytes("payment_hash", payment_hash, 32)
        stubs = self._require()
        msg = await self._call(stubs.lightning.LookupInvoice, ln.PaymentHash(r_hash=raw))
        return invoice_from_proto(msg)

    async def list_invoices(
        self,
        index_offset: int = 0,
        num_max_invoices: int = 1000,
        pending_only: bool = False,
        reversed: bool = False,
    ) -> InvoicePage:
        _int("index_offset", index_offset)
        _int("num_max_invoices", num_max_invoices, 1)
        stubs = self._require()
        msg = await self._call(
            stubs.lightning.ListInvoices,
            ln.ListInvoiceRequest(
                index_offset=index_offset,
                num_max_invoices=num_max_invoices,
                pending_only=pending_only,
                reversed=reversed,
            ),
        )
        return InvoicePage(
            invoices=[invoice_from_proto(i) for i in msg.invoices],
            first_index_offset=msg.first_index_offset,
            last_index_offset=msg.last_index_offset,
        )

    async def decode_pay_req(self, pay_req: str) -> PayReq:
        if not isinstance(pay_req, str) or not pay_req.strip():
            raise ValueError("pay_req: expected a BOLT 11 payment request")
        text = pay_req.strip()
        if text.lower().startswith("lightning:"):
            text = text[len("lightning:") :]
        stubs = self._require()
        msg = await self._call(stubs.lightning.DecodePayReq, ln.PayReqString(pay_req=text))
        return PayReq(
            destination=msg.destination,
            payment_hash=msg.payment_hash,
            num_msat=msg.num_msat,
            timestamp=msg.timestamp,
            expiry=msg.expiry,
            description=msg.description,
            description_hash=msg.description_hash,
            cltv_expiry=msg.cltv_expiry,
            payment_addr=msg.payment_addr.hex(),
            fallback_addr=msg.fallback_addr,
        )

    # ------------------------------------------------------------ payments

    async def send_payment(
        self,
        payment_request: str | None = None,
        *,
        dest: str | None = None,
        amt_msat: int | None = None,
        payment_hash: str | None = None,
        final_cltv_delta: int | None = None,
        payment_addr: str | None = None,
        fee_limit_msat: int,
        timeout_seconds: int,
        outgoing_chan_ids: Iterable[int] = (),
        last_hop_pubkey: str | None = None,
        allow_self_payment: bool = False,
        max_parts: int = 1,
        on_update: PaymentUpdateCallback | None = None,
    ) -> Payment:
        """Pay through Router.SendPaymentV2 and return the payment in its final state:
        SUCCEEDED, or FAILED with ``failure_reason`` (a failed payment is a result, not
        an exception). ``on_update`` (plain or async) sees every intermediate state.

        Either ``payment_request`` or ``dest`` + ``amt_msat`` + ``payment_hash``.
        """
        request = router_pb2.SendPaymentRequest(
            fee_limit_msat=_int("fee_limit_msat", fee_limit_msat),
            timeout_seconds=_int("timeout_seconds", timeout_seconds, 1, 2**31 - 1),
            allow_self_payment=allow_self_payment,
            max_parts=_int("max_parts", max_parts, 1, 2**32 - 1),
            no_inflight_updates=on_update is None,
        )
        if payment_request:
            if dest is not None:
                raise ValueError("dest: give either payment_request or dest, not both")
            request.payment_request = payment_request.strip()
        elif dest is not None:
            request.dest = _pubkey("dest", dest)
            if payment_hash is None:
                raise ValueError("payment_hash: required when paying dest without a payment_request")
            if amt_msat is None:
                raise ValueError("amt_msat: required when paying dest without a payment_request")
        else:
            raise ValueError("payment_request: required (or dest, amt_msat and payment_hash)")
        if amt_msat is not None:
            request.amt_msat = _int("amt_msat", amt_msat, 1)
        if payment_hash is not None:
            request.payment_hash = _hex_bytes("payment_hash", payment_hash, 32)
        if final_cltv_delta is not None:
            request.final_cltv_delta = _int("final_cltv_delta", final_cltv_delta, 1, 2**31 - 1)
        if payment_addr is not None:
            request.payment_addr = _hex_bytes("payment_addr", payment_addr, 32)
        chan_ids = list(outgoing_chan_ids)
        for i, chan_id in enumerate(chan_ids):
            _int(f"outgoing_chan_ids[{i}]", chan_id, 1, 2**64 - 1)
        request.outgoing_chan_ids.extend(chan_ids)
        if last_hop_pubkey is not None:
            request.last_hop_pubkey = _pubkey("last_hop_pubkey", last_hop_pubkey)
        stubs = self._require()
        deadline = timeout_seconds + max(PAYMENT_DEADLINE_MARGIN, self._rpc_timeout)
        last: Payment | None = None

        async def accept(msg: ln.Payment) -> Payment | None:
            nonlocal last
            payment = last = payment_from_proto(msg)
            if on_update is not None:
                result = on_update(payment)
                if inspect.isawaitable(result):
                    await result
            return payment if payment.final else None

        final = await self._stream_until(stubs.router.SendPaymentV2, request, deadline, accept)
        if final is not None:
            return final
        raise LndError(
            "UNKNOWN",
            "the payment stream ended before the payment reached a final state"
            + (f" (last state {last.status})" if last is not None else ""),
            "unreachable",
        )

    async def list_payments(
        self, index_offset: int = 0, max_payments: int = 1000, include_incomplete: bool = True
    ) -> PaymentPage:
        _int("index_offset", index_offset)
        _int("max_payments", max_payments, 1)
        stubs = self._require()
        msg = await self._call(
            stubs.lightning.ListPayments,
            ln.ListPaymentsRequest(
                index_offset=index_offset, max_payments=max_payments, include_incomplete=include_incomplete
            ),
        )
        return PaymentPage(
            payments=[payment_from_proto(p) for p in msg.payments],
            first_index_offset=msg.first_index_offset,
            last_index_offset=msg.last_index_offset,
            total_num_payments=msg.total_num_payments,
        )

    # ------------------------------------------------------------ channels

    async def list_channels(self, active_only: bool = False) -> list[Channel]:
        stubs = self._require()
        msg = await self._call(stubs.lightning.ListChannels, ln.ListChannelsRequest(active_only=active_only))
        return [_channel(c) for c in msg.channels]

    async def pending_channels(self) -> PendingChannels:
        stubs = self._require()
        msg = await self._call(stubs.lightning.PendingChannels, ln.PendingChannelsRequest())
        return PendingChannels(
            total_limbo_balance_sat=msg.total_limbo_balance,
            pending_open=[_pending(p.channel) for p in msg.pending_open_channels],
            waiting_close=[
                _pending(p.channel, closing_txid=p.closing_txid, limbo_balance_sat=p.limbo_balance)
                for p in msg.waiting_close_channels
            ],
            force_closing=[
                _pending(
                    p.channel,
                    closing_txid=p.closing_txid,
                    limbo_balance_sat=p.limbo_balance,
                    blocks_til_maturity=p.blocks_til_maturity,
                )
                for p in msg.pending_force_closing_channels
            ],
        )

    async def closed_channels(self) -> list[ClosedChannel]:
        stubs = self._require()
        msg = await self._call(stubs.lightning.ClosedChannels, ln.ClosedChannelsRequest())
        return [_closed(c) for c in msg.channels]

    async def open_channel(
        self,
        node_pubkey: str,
        local_funding_amount_sat: int,
        push_sat: int = 0,
        private: bool = False,
        sat_per_vbyte: int | None = None,
    ) -> str:
        """Open a channel and return its channel point once the funding transaction
        is published (``OpenChannelSync``)."""
        request = ln.OpenChannelRequest(
            node_pubkey=_pubkey("node_pubkey", node_pubkey),
            local_funding_amount=_int("local_funding_amount_sat", local_funding_amount_sat, 1),
            push_sat=_int("push_sat", push_sat),
            private=private,
        )
        if push_sat >= local_funding_amount_sat:
            raise ValueError("push_sat: must be less than local_funding_amount_sat")
        if sat_per_vbyte is not None:
            request.sat_per_vbyte = _int("sat_per_vbyte", sat_per_vbyte, 1)
        stubs = self._require()
        point = await self._call(stubs.lightning.OpenChannelSync, request)
        return _point_str(point)

    async def close_channel(
        self, channel_point: str, force: bool = False, sat_per_vbyte: int | None = None
    ) -> str:
        """Close a channel and return the closing transaction id once LND has
        published it (the first update of ``CloseChannel``)."""
        request = ln.CloseChannelRequest(
            channel_point=_channel_point("channel_point", channel_point), force=force
        )
        if sat_per_vbyte is not None:
            if force:
                raise ValueError("sat_per_vbyte: LND does not accept a fee rate for a force close")
            request.sat_per_vbyte = _int("sat_per_vbyte", sat_per_vbyte, 1)
        stubs = self._require()

        async def accept(update: ln.CloseStatusUpdate) -> str | None:
            which = update.WhichOneof("update")
            if which == "close_pending":
                return update.close_pending.txid[::-1].hex()
            if which == "chan_close":
                return update.chan_close.closing_txid[::-1].hex()
            return None

        txid = await self._stream_until(stubs.lightning.CloseChannel, request, self._rpc_timeout, accept)
        if txid is None:
            raise LndError("UNKNOWN", "LND ended the close stream without a closing transaction", "other")
        return txid

    async def list_peers(self) -> list[Peer]:
        stubs = self._require()
        msg = await self._call(stubs.lightning.ListPeers, ln.ListPeersRequest())
        return [
            Peer(
                pubkey=p.pub_key,
                address=p.address,
                bytes_sent=p.bytes_sent,
                bytes_recv=p.bytes_recv,
                sat_sent=p.sat_sent,
                sat_recv=p.sat_recv,
                inbound=p.inbound,
                ping_time=p.ping_time,
                sync_type=_enum(ln.Peer.SyncType, p.sync_type),
                flap_count=p.flap_count,
            )
            for p in msg.peers
        ]

    async def get_node_info(self, pubkey: str) -> LightningNode:
        _pubkey("pubkey", pubkey)
        stubs = self._require()
        msg = await self._call(stubs.lightning.GetNodeInfo, ln.NodeInfoRequest(pub_key=pubkey.lower()))
        return LightningNode(
            pubkey=msg.node.pub_key or pubkey.lower(),
            alias=msg.node.alias,
            color=msg.node.color,
            last_update=msg.node.last_update,
            addresses=[NodeAddress(network=a.network, addr=a.addr) for a in msg.node.addresses],
            num_channels=msg.num_channels,
            total_capacity_sat=msg.total_capacity,
        )

    # ------------------------------------------------------------ fees and forwards

    async def fee_report(self) -> FeeReport:
        stubs = self._require()
        msg = await self._call(stubs.lightning.FeeReport, ln.FeeReportRequest())
        return FeeReport(
            channel_fees=[
                ChannelFee(
                    chan_id=f.chan_id,
                    channel_point=f.channel_point,
                    base_fee_msat=f.base_fee_msat,
                    fee_per_mil=f.fee_per_mil,
                    fee_rate=f.fee_rate,
                )
                for f in msg.channel_fees
            ],
            day_fee_sum_sat=msg.day_fee_sum,
            week_fee_sum_sat=msg.week_fee_sum,
            month_fee_sum_sat=msg.month_fee_sum,
        )

    async def update_channel_policy(
        self, channel_point: str, base_fee_msat: int, fee_rate_ppm: int, time_lock_delta: int
    ) -> None:
        """Set one channel's forwarding policy; raises ``LndError`` when LND reports
        the update failed."""
        request = ln.PolicyUpdateRequest(
            chan_point=_channel_point("channel_point", channel_point),
            base_fee_msat=_int("base_fee_msat", base_fee_msat),
            fee_rate_ppm=_int("fee_rate_ppm", fee_rate_ppm, 0, 2**32 - 1),
            time_lock_delta=_int("time_lock_delta", time_lock_delta, 18, 65535),
        )
        stubs = self._require()
        msg = await self._call(stubs.lightning.UpdateChannelPolicy, request)
        if len(msg.failed_updates):
            failure = msg.failed_updates[0]
            reason = _enum(ln.UpdateFailure, failure.reason)
            kind = "not_found" if reason == "UPDATE_FAILURE_NOT_FOUND" else "invalid"
            raise LndError("UNKNOWN", f"{reason}: {failure.update_error}".rstrip(": "), kind)

    async def forwarding_history(
        self, start_time: int, end_time: int, index_offset: int = 0, num_max_events: int = 10000
    ) -> ForwardPage:
        _int("start_time", start_time)
        _int("end_time", end_time)
        if end_time and end_time < start_time:
            raise ValueError("end_time: must not be before start_time")
        _int("index_offset", index_offset, 0, 2**32 - 1)
        _int("num_max_events", num_max_events, 1, 50000)
        stubs = self._require()
        msg = await self._call(
            stubs.lightning.ForwardingHistory,
            ln.ForwardingHistoryRequest(
                start_time=start_time,
                end_time=end_time,
                index_offset=index_offset,
                num_max_events=num_max_events,
            ),
        )
        return ForwardPage(
            forwarding_events=[
                ForwardingEvent(
                    chan_id_in=e.chan_id_in,
                    chan_id_out=e.chan_id_out,
                    amt_in_msat=e.amt_in_msat,
                    amt_out_msat=e.amt_out_msat,
                    fee_msat=e.fee_msat,
                    timestamp_ns=e.timestamp_ns,
                    peer_alias_in=e.peer_alias_in,
                    peer_alias_out=e.peer_alias_out,
                )
                for e in msg.forwarding_events
            ],
            last_offset_index=msg.last_offset_index,
        )

    async def estimate_fee(self, target_conf: int = 6) -> int:
        """LND's fee estimate in sat/vbyte for confirmation within ``target_conf``
        blocks. (LND sizes a one-output transaction from the wallet's own coins, so
        an empty wallet makes this fail.)"""
        _int("target_conf", target_conf, 1, 1008)
        stubs = self._require()
        if self._network is None:
            self._network = (await self.get_info()).network
        hrp = _HRP.get(self._network, "bc")
        msg = await self._call(
            stubs.lightning.EstimateFee,
            # An all-zero key hash: LND only sizes a transaction paying it, nothing is sent.
            ln.EstimateFeeRequest(
                AddrToAmount={_segwit_v0_address(hrp, bytes(20)): 10_000}, target_conf=target_conf
            ),
        )
        return int(msg.sat_per_vbyte)

    async def export_all_channel_backups(self) -> ChanBackup:
        stubs = self._require()
        msg = await self._call(stubs.lightning.ExportAllChannelBackups, ln.ChanBackupExportRequest())
        return ChanBackup(
            multi_chan_backup=msg.multi_chan_backup.multi_chan_backup.hex(),
            chan_points=[_point_str(p) for p in msg.multi_chan_backup.chan_points],
            single_chan_backups=[
                SingleChanBackup(channel_point=_point_str(b.chan_point), backup=b.chan_backup.hex())
                for b in msg.single_chan_backups.chan_backups
            ],
        )


def _rpc_name(method: Any, request: Any) -> str:
    """The RPC's name ("GetInfo"), from grpc's multicallable when it tells, else the
    request type."""
    path = getattr(method, "_method", b"")
    if isinstance(path, bytes) and path:
        return path.rsplit(b"/", 1)[-1].decode()
    return type(request).__name__
