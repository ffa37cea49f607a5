"""LND protobuf messages -> events (the edge: nothing past this module sees protobuf).

Pure functions, called for every message of every stream, so they are written for
speed: plain attribute reads, no reflection on the hot path, enum names from small
dict caches.

Conventions:

- hashes and preimages are lower-case hex of the bytes LND sends;
- a channel point is ``"txid:index"`` with the txid in display order; LND's
  ``funding_txid_bytes`` and ``PendingUpdate.txid`` hold the txid in internal
  (little-endian) byte order, which is the display hex reversed;
- amounts are msat: LND's ``*_msat`` fields where they exist, else ``sat * 1000``.

An invoice's preimage is only copied into ``InvoiceSettled``: before settlement it is
the secret that proves payment and must not travel to webhooks or logs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..events import (
    ChannelActive,
    ChannelBackupUpdated,
    ChannelClosed,
    ChannelInactive,
    ChannelOpened,
    ChannelPendingOpen,
    Event,
    ForwardFailed,
    ForwardSettled,
    InvoiceAccepted,
    InvoiceCanceled,
    InvoiceCreated,
    InvoiceEvent,
    InvoiceExpired,
    InvoiceSettled,
    PaymentFailed,
    PaymentSucceeded,
    PeerOffline,
    PeerOnline,
)
from .rpc import lightning_pb2 as ln

__all__ = [
    "ACCEPTED",
    "CANCELED",
    "OPEN",
    "PAYMENT_FAILED",
    "PAYMENT_SUCCEEDED",
    "SETTLED",
    "backup_event",
    "channel_event",
    "channel_point_str",
    "closed_channel_events",
    "forward_failed",
    "forward_from_history",
    "forward_settled",
    "invoice_closed_event",
    "invoice_created",
    "invoice_events",
    "invoice_expires_at",
    "invoice_is_hold",
    "invoice_state_event",
    "link_failure",
    "open_channel_event",
    "payment_event",
    "peer_event",
    "pending_open_event",
    "txid_from_bytes",
]

# lnrpc.Invoice.InvoiceState
OPEN = 0
SETTLED = 1
CANCELED = 2
ACCEPTED = 3

# lnrpc.Payment.PaymentStatus
PAYMENT_SUCCEEDED = 2
PAYMENT_FAILED = 3

# lnrpc.ChannelEventUpdate.UpdateType
_OPEN_CHANNEL = 0
_CLOSED_CHANNEL = 1
_ACTIVE_CHANNEL = 2
_INACTIVE_CHANNEL = 3
_PENDING_OPEN_CHANNEL = 4

# lnrpc.Initiator
_INITIATOR_LOCAL = 1

# lnrpc.PeerEvent.EventType
_PEER_ONLINE = 0

# Names of LND enums, as LND spells them (lnrpc.PaymentFailureReason,
# lnrpc.ChannelCloseSummary.ClosureType). Values LND adds later fall back to the number.
_FAILURE_REASONS: dict[int, str] = {
    0: "FAILURE_REASON_NONE",
    1: "FAILURE_REASON_TIMEOUT",
    2: "FAILURE_REASON_NO_ROUTE",
    3: "FAILURE_REASON_ERROR",
    4: "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS",
    5: "FAILURE_REASON_INSUFFICIENT_BALANCE",
    6: "FAILURE_REASON_CANCELED",
}
_CLOSURE_TYPES: dict[int, str] = {
    0: "COOPERATIVE_CLOSE",
    1: "LOCAL_FORCE_CLOSE",
    2: "REMOTE_FORCE_CLOSE",
    3: "BREACH_CLOSE",
    4: "FUNDING_CANCELED",
    5: "ABANDONED",
}


_WIRE_FAILURES: dict[int, str] = {}


def _enum_name(table: dict[int, str], value: int) -> str:
    name = table.get(value)
    return name if name is not None else str(value)


# ---------------------------------------------------------------- channel points


def txid_from_bytes(txid: bytes) -> str:
    """Display hex of a txid given in LND's internal byte order (reversed)."""
    return txid[::-1].hex()


def channel_point_str(point: Any) -> str:
    """``"txid:index"`` of an ``lnrpc.ChannelPoint``, whichever oneof member is set."""
    if point.WhichOneof("funding_txid") == "funding_txid_str":
        txid = point.funding_txid_str
    else:
        txid = point.funding_txid_bytes[::-1].hex()
    return f"{txid}:{point.output_index}"


# ---------------------------------------------------------------- invoices


def invoice_expires_at(inv: Any) -> int:
    """UTC unix time at which an ``lnrpc.Invoice`` expires."""
    return inv.creation_date + inv.expiry


def invoice_is_hold(inv: Any) -> bool:
    """True for a hold invoice: LND stores no preimage for it until it is settled."""
    return not inv.r_preimage and not inv.is_keysend and not inv.is_amp


def _invoice_fields(inv: Any, now: float, with_preimage: bool) -> dict[str, Any]:
    return {
        "time": now,
        "payment_hash": inv.r_hash.hex(),
        "payment_request": inv.payment_request,
        "memo": inv.memo,
        "value_msat": inv.value_msat,
        "amt_paid_msat": inv.amt_paid_msat,
        "creation_date": inv.creation_date,
        "expiry": inv.expiry,
        "settle_date": inv.settle_date,
        "add_index": inv.add_index,
        "settle_index": inv.settle_index,
        "preimage": inv.r_preimage.hex() if with_preimage else "",
        "is_keysend": inv.is_keysend,
        "private": inv.private,
    }


def invoice_created(inv: Any, now: float | None = None) -> InvoiceCreated:
    """``InvoiceCreated`` for an invoice in any state (its creation is a fact in all)."""
    fields = _invoice_fields(inv, time.time() if now is None else now, False)
    # The invoice as it was when created: nothing paid or settled yet.
    fields["amt_paid_msat"] = 0
    fields["settle_date"] = 0
    fields["settle_index"] = 0
    return InvoiceCreated(**fields)


def invoice_closed_event(inv: Any, observed_at: float) -> InvoiceEvent:
    """The event for a CANCELED invoice.

    LND records no cancel time and cancels expired invoices itself, silently, so the
    daemon's rule is: canceled while observed before its expiry time means canceled on
    request (``InvoiceCanceled``); observed at or after its expiry time means it expired
    (``InvoiceExpired``).
    """
    fields = _invoice_fields(inv, observed_at, False)
    if observed_at < inv.creation_date + inv.expiry:
        return InvoiceCanceled(**fields)
    return InvoiceExpired(**fields)


def invoice_state_event(inv: Any, now: float | None = None) -> InvoiceEvent | None:
    """The event for an invoice's current state beyond creation (None while OPEN)."""
    state = inv.state
    if state == OPEN:
        return None
    at = time.time() if now is None else now
    if state == SETTLED:
        return InvoiceSettled(**_invoice_fields(inv, at, True))
    if state == ACCEPTED:
        return InvoiceAccepted(**_invoice_fields(inv, at, False))
    if state == CANCELED:
        return invoice_closed_event(inv, at)
    return None


def invoice_events(inv: Any, now: float | None = None, created: bool = True) -> list[InvoiceEvent]:
    """Every event an invoice in its current state implies: ``InvoiceCreated`` (unless
    ``created`` is False because it is known to be journaled already) then the event of
    its state. Replays and ListInvoices give invoices in their current state, so an
    invoice settled while the daemon was away yields both."""
    at = time.time() if now is None else now
    out: list[InvoiceEvent] = []
    if created:
        out.append(invoice_created(inv, at))
    event = invoice_state_event(inv, at)
    if event is not None:
        out.append(event)
    return out


# ---------------------------------------------------------------- payments


def _payment_destination(payment: Any) -> str:
    # The route of the last HTLC attempt ends at the destination.
    htlcs = payment.htlcs
    if htlcs:
        hops = htlcs[-1].route.hops
        if hops:
            return hops[-1].pub_key
    return ""


def payment_event(payment: Any, now: float | None = None) -> PaymentSucceeded | PaymentFailed | None:
    """The event of an ``lnrpc.Payment`` in a final state, None while it is in flight."""
    status = payment.status
    if status == PAYMENT_SUCCEEDED:
        cls: type[PaymentSucceeded] | type[PaymentFailed] = PaymentSucceeded
        reason = ""
    elif status == PAYMENT_FAILED:
        cls = PaymentFailed
        reason = _enum_name(_FAILURE_REASONS, payment.failure_reason)
    else:
        return None
    preimage = payment.payment_preimage
    return cls(
        time=time.time() if now is None else now,
        payment_hash=payment.payment_hash,
        payment_index=payment.payment_index,
        value_msat=payment.value_msat,
        fee_msat=payment.fee_msat,
        payment_request=payment.payment_request,
        # LND reports an all-zero preimage for payments that did not succeed.
        payment_preimage=preimage if status == PAYMENT_SUCCEEDED else "",
        creation_time_ns=payment.creation_time_ns,
        failure_reason=reason,
        destination=_payment_destination(payment),
    )


# ---------------------------------------------------------------- channels


def open_channel_event(chan: Any, now: float | None = None) -> ChannelOpened:
    """``ChannelOpened`` for an ``lnrpc.Channel`` (ListChannels, or the channel stream)."""
    return ChannelOpened(
        time=time.time() if now is None else now,
        channel_point=chan.channel_point,
        chan_id=chan.chan_id,
        remote_pubkey=chan.remote_pubkey,
        capacity_sat=chan.capacity,
        local_balance_sat=chan.local_balance,
        remote_balance_sat=chan.remote_balance,
        private=chan.private,
        initiator=chan.initiator,
    )


def pending_open_event(pending: Any, now: float | None = None) -> ChannelPendingOpen:
    """``ChannelPendingOpen`` for a ``PendingChannelsResponse.PendingOpenChannel``."""
    chan = pending.channel
    return ChannelPendingOpen(
        time=time.time() if now is None else now,
        channel_point=chan.channel_point,
        remote_pubkey=chan.remote_node_pub,
        capacity_sat=chan.capacity,
        local_balance_sat=chan.local_balance,
        remote_balance_sat=chan.remote_balance,
        private=chan.private,
        initiator=chan.initiator == _INITIATOR_LOCAL,
    )


def _closed(summary: Any, at: float) -> ChannelClosed:
    return ChannelClosed(
        time=at,
        channel_point=summary.channel_point,
        chan_id=summary.chan_id,
        remote_pubkey=summary.remote_pubkey,
        capacity_sat=summary.capacity,
        local_balance_sat=summary.settled_balance,
        initiator=summary.open_initiator == _INITIATOR_LOCAL,
        close_type=_enum_name(_CLOSURE_TYPES, summary.close_type),
        closing_tx_hash=summary.closing_tx_hash,
        settled_balance_sat=summary.settled_balance,
        close_height=summary.close_height,
    )


def closed_channel_events(summary: Any, now: float | None = None) -> list[Event]:
    """Events for an ``lnrpc.ChannelCloseSummary`` found by reconciliation:
    ``ChannelOpened`` (dropped by the journal when already known; a channel that opened
    and closed while the daemon was away still gets its opening) then ``ChannelClosed``.
    A canceled funding never opened, so it yields only ``ChannelClosed``."""
    at = time.time() if now is None else now
    closed = _closed(summary, at)
    if closed.close_type == "FUNDING_CANCELED":
        return [closed]
    opened = ChannelOpened(
        time=at,
        channel_point=summary.channel_point,
        chan_id=summary.chan_id,
        remote_pubkey=summary.remote_pubkey,
        capacity_sat=summary.capacity,
        initiator=closed.initiator,
    )
    return [opened, closed]


def channel_event(update: Any, now: float | None = None) -> Event | None:
    """The event of an ``lnrpc.ChannelEventUpdate`` (None for FULLY_RESOLVED and unknown
    update types)."""
    at = time.time() if now is None else now
    kind = update.type
    if kind == _ACTIVE_CHANNEL:
        return ChannelActive(time=at, channel_point=channel_point_str(update.active_channel))
    if kind == _INACTIVE_CHANNEL:
        return ChannelInactive(time=at, channel_point=channel_point_str(update.inactive_channel))
    if kind == _OPEN_CHANNEL:
        return open_channel_event(update.open_channel, at)
    if kind == _CLOSED_CHANNEL:
        return _closed(update.closed_channel, at)
    if kind == _PENDING_OPEN_CHANNEL:
        pending = update.pending_open_channel
        return ChannelPendingOpen(
            time=at,
            channel_point=f"{pending.txid[::-1].hex()}:{pending.output_index}",
            initiator=False,
        )
    return None


# ---------------------------------------------------------------- forwards, peers, backups


def forward_from_history(fwd: Any, now: float | None = None) -> ForwardSettled:
    """``ForwardSettled`` for an ``lnrpc.ForwardingEvent`` from ForwardingHistory.

    LND's forwarding log does not record HTLC ids, so they are 0 here.
    """
    return ForwardSettled(
        time=time.time() if now is None else now,
        incoming_chan_id=fwd.chan_id_in,
        outgoing_chan_id=fwd.chan_id_out,
        amt_in_msat=fwd.amt_in_msat or fwd.amt_in * 1000,
        amt_out_msat=fwd.amt_out_msat or fwd.amt_out * 1000,
        timestamp_ns=fwd.timestamp_ns or fwd.timestamp * 1_000_000_000,
    )


def forward_settled(
    key: tuple[int, int, int, int], amt_in_msat: int, amt_out_msat: int, timestamp_ns: int, now: float
) -> ForwardSettled:
    """``ForwardSettled`` for an HTLC stream SettleEvent, keyed by
    (incoming chan, incoming htlc, outgoing chan, outgoing htlc)."""
    return ForwardSettled(
        time=now,
        incoming_chan_id=key[0],
        incoming_htlc_id=key[1],
        outgoing_chan_id=key[2],
        outgoing_htlc_id=key[3],
        amt_in_msat=amt_in_msat,
        amt_out_msat=amt_out_msat,
        timestamp_ns=timestamp_ns,
    )


def forward_failed(
    key: tuple[int, int, int, int],
    amt_in_msat: int,
    amt_out_msat: int,
    timestamp_ns: int,
    failure: str,
    now: float,
) -> ForwardFailed:
    """``ForwardFailed`` for an HTLC stream ForwardFailEvent or LinkFailEvent."""
    return ForwardFailed(
        time=now,
        incoming_chan_id=key[0],
        incoming_htlc_id=key[1],
        outgoing_chan_id=key[2],
        outgoing_htlc_id=key[3],
        amt_in_msat=amt_in_msat,
        amt_out_msat=amt_out_msat,
        timestamp_ns=timestamp_ns,
        failure=failure,
    )


def link_failure(link_fail: Any) -> str:
    """Why a forward failed at our link (``routerrpc.LinkFailEvent``): LND's failure
    string, else the wire failure code's name."""
    if link_fail.failure_string:
        return link_fail.failure_string
    code = link_fail.wire_failure
    name = _WIRE_FAILURES.get(code)
    if name is None:
        try:
            name = ln.Failure.FailureCode.Name(code)
        except ValueError:
            name = str(code)
        _WIRE_FAILURES[code] = name
    return name


def peer_event(update: Any, now: float | None = None) -> PeerOnline | PeerOffline:
    """The event of an ``lnrpc.PeerEvent``."""
    at = time.time() if now is None else now
    if update.type == _PEER_ONLINE:
        return PeerOnline(time=at, pubkey=update.pub_key)
    return PeerOffline(time=at, pubkey=update.pub_key)


def backup_event(snapshot: Any, now: float | None = None) -> ChannelBackupUpdated | None:
    """``ChannelBackupUpdated`` for an ``lnrpc.ChanBackupSnapshot`` (None when it holds
    no multi-channel backup)."""
    multi = snapshot.multi_chan_backup
    if not multi.multi_chan_backup:
        return None
    points: Sequence[Any] = multi.chan_points
    return ChannelBackupUpdated(
        time=time.time() if now is None else now,
        multi_chan_backup=bytes(multi.multi_chan_backup),
        chan_points=[channel_point_str(p) for p in points],
    )
