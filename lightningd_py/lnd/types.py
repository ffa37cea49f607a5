"""The plain types ``LndClient`` returns: msgspec frozen Structs, never protobuf.

Conventions: binary values (hashes, preimages, backups) are lower-case hex strings;
amounts carry their unit in the name (``*_msat``, ``*_sat``); LND enums are their
names (``"SETTLED"``, ``"FAILURE_REASON_NO_ROUTE"``); times are as LND reports them,
UTC unix seconds or nanoseconds (``*_ns``); channel ids are LND's uint64 short
channel ids; channel points are ``"txid:output_index"``.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "AddedInvoice",
    "ChanBackup",
    "Channel",
    "ChannelBalance",
    "ChannelFee",
    "ClosedChannel",
    "FeeReport",
    "ForwardPage",
    "ForwardingEvent",
    "HtlcAttempt",
    "Invoice",
    "InvoicePage",
    "LightningNode",
    "NodeAddress",
    "NodeInfo",
    "PayReq",
    "Payment",
    "PaymentPage",
    "Peer",
    "PendingChannel",
    "PendingChannels",
    "RouteHop",
    "SingleChanBackup",
    "WalletBalance",
]


class _LndType(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the types below."""


class NodeInfo(_LndType, frozen=True, kw_only=True):
    """``GetInfo``: this node."""

    pubkey: str
    alias: str = ""
    color: str = ""
    version: str = ""
    commit_hash: str = ""
    num_active_channels: int = 0
    num_inactive_channels: int = 0
    num_pending_channels: int = 0
    num_peers: int = 0
    block_height: int = 0
    block_hash: str = ""
    best_header_timestamp: int = 0
    synced_to_chain: bool = False
    synced_to_graph: bool = False
    chain: str = ""
    network: str = ""
    uris: list[str] = msgspec.field(default_factory=list)


class WalletBalance(_LndType, frozen=True, kw_only=True):
    """``WalletBalance``: on-chain funds, satoshi."""

    total_balance_sat: int = 0
    confirmed_balance_sat: int = 0
    unconfirmed_balance_sat: int = 0
    locked_balance_sat: int = 0
    reserved_balance_anchor_chan_sat: int = 0


class ChannelBalance(_LndType, frozen=True, kw_only=True):
    """``ChannelBalance``: funds in channels, millisatoshi."""

    local_balance_msat: int = 0
    remote_balance_msat: int = 0
    unsettled_local_balance_msat: int = 0
    unsettled_remote_balance_msat: int = 0
    pending_open_local_balance_msat: int = 0
    pending_open_remote_balance_msat: int = 0


class Invoice(_LndType, frozen=True, kw_only=True):
    """An invoice of this node.

    :ivar state: ``"OPEN"``, ``"SETTLED"``, ``"CANCELED"`` or ``"ACCEPTED"``.
    :ivar preimage: hex; empty for a hold invoice until it is settled.
    :ivar htlcs: how many HTLCs paid (or are paying) it.
    """

    payment_hash: str
    preimage: str = ""
    state: str = "OPEN"
    value_msat: int = 0
    amt_paid_msat: int = 0
    creation_date: int = 0
    expiry: int = 0
    settle_date: int = 0
    add_index: int = 0
    settle_index: int = 0
    memo: str = ""
    payment_request: str = ""
    description_hash: str = ""
    payment_addr: str = ""
    cltv_expiry: int = 0
    is_keysend: bool = False
    is_amp: bool = False
    private: bool = False
    htlcs: int = 0

    @property
    def expires_at(self) -> int:
        """UTC unix time at which the invoice expires."""
        return self.creation_date + self.expiry


class InvoicePage(_LndType, frozen=True, kw_only=True):
    """``ListInvoices``: a page, and the add_index bounds to ask for the next one."""

    invoices: list[Invoice] = msgspec.field(default_factory=list)
    first_index_offset: int = 0
    last_index_offset: int = 0


class AddedInvoice(_LndType, frozen=True, kw_only=True):
    """``AddInvoice`` / ``AddHoldInvoice``: the new invoice's identifiers."""

    payment_hash: str
    payment_request: str
    add_index: int = 0
    payment_addr: str = ""


class PayReq(_LndType, frozen=True, kw_only=True):
    """``DecodePayReq``: a BOLT 11 payment request's contents."""

    destination: str
    payment_hash: str
    num_msat: int = 0
    timestamp: int = 0
    expiry: int = 0
    description: str = ""
    description_hash: str = ""
    cltv_expiry: int = 0
    payment_addr: str = ""
    fallback_addr: str = ""

    @property
    def expires_at(self) -> int:
        return self.timestamp + self.expiry


class RouteHop(_LndType, frozen=True, kw_only=True):
    """One hop of a payment attempt's route."""

    chan_id: int
    pubkey: str = ""
    fee_msat: int = 0
    amt_to_forward_msat: int = 0
    expiry: int = 0


class HtlcAttempt(_LndType, frozen=True, kw_only=True):
    """One HTLC attempt of a payment: its route summary and outcome.

    :ivar status: ``"IN_FLIGHT"``, ``"SUCCEEDED"`` or ``"FAILED"``.
    :ivar failure_code: LND's ``Failure.FailureCode`` name when it failed, else ``""``.
    """

    attempt_id: int = 0
    status: str = "IN_FLIGHT"
    attempt_time_ns: int = 0
    resolve_time_ns: int = 0
    total_amt_msat: int = 0
    total_fees_msat: int = 0
    total_time_lock: int = 0
    hops: list[RouteHop] = msgspec.field(default_factory=list)
    failure_code: str = ""
    failure_source_index: int = 0


class Payment(_LndType, frozen=True, kw_only=True):
    """An outgoing payment.

    :ivar status: ``"UNKNOWN"``, ``"IN_FLIGHT"``, ``"SUCCEEDED"`` or ``"FAILED"`` (LND
        0.18+ may also report ``"INITIATED"``).
    :ivar failure_reason: ``PaymentFailureReason`` name, ``"FAILURE_REASON_NONE"``
        unless it failed.
    """

    payment_hash: str
    payment_preimage: str = ""
    value_msat: int = 0
    fee_msat: int = 0
    status: str = "UNKNOWN"
    failure_reason: str = "FAILURE_REASON_NONE"
    payment_index: int = 0
    creation_time_ns: int = 0
    payment_request: str = ""
    htlcs: list[HtlcAttempt] = msgspec.field(default_factory=list)

    @property
    def final(self) -> bool:
        """Whether the payment reached SUCCEEDED or FAILED."""
        return self.status in ("SUCCEEDED", "FAILED")


class PaymentPage(_LndType, frozen=True, kw_only=True):
    """``ListPayments``: a page, and the payment_index bounds for the next one."""

    payments: list[Payment] = msgspec.field(default_factory=list)
    first_index_offset: int = 0
    last_index_offset: int = 0
    total_num_payments: int = 0


class Channel(_LndType, frozen=True, kw_only=True):
    """An open channel (``ListChannels``)."""

    chan_id: int
    channel_point: str
    remote_pubkey: str = ""
    capacity_sat: int = 0
    local_balance_sat: int = 0
    remote_balance_sat: int = 0
    active: bool = False
    private: bool = False
    initiator: bool = False
    num_pending_htlcs: int = 0
    total_satoshis_sent: int = 0
    total_satoshis_received: int = 0
    uptime: int = 0
    lifetime: int = 0
    peer_alias: str = ""
    local_chan_reserve_sat: int = 0
    remote_chan_reserve_sat: int = 0
    commit_fee: int = 0
    unsettled_balance_sat: int = 0
    commitment_type: str = ""


class PendingChannel(_LndType, frozen=True, kw_only=True):
    """A channel opening or closing (``PendingChannels``).

    :ivar initiator: LND's Initiator name (``"INITIATOR_LOCAL"``, ...).
    :ivar closing_txid: for closing channels, the closing transaction if known.
    :ivar limbo_balance_sat: funds not yet spendable (closing channels).
    :ivar blocks_til_maturity: force-closed channels: blocks until funds are swept.
    """

    channel_point: str
    remote_pubkey: str = ""
    capacity_sat: int = 0
    local_balance_sat: int = 0
    remote_balance_sat: int = 0
    initiator: str = "INITIATOR_UNKNOWN"
    private: bool = False
    closing_txid: str = ""
    limbo_balance_sat: int = 0
    blocks_til_maturity: int = 0


class PendingChannels(_LndType, frozen=True, kw_only=True):
    """``PendingChannels``, by phase."""

    total_limbo_balance_sat: int = 0
    pending_open: list[PendingChannel] = msgspec.field(default_factory=list)
    waiting_close: list[PendingChannel] = msgspec.field(default_factory=list)
    force_closing: list[PendingChannel] = msgspec.field(default_factory=list)


class ClosedChannel(_LndType, frozen=True, kw_only=True):
    """A closed channel (``ClosedChannels``).

    :ivar close_type: LND's ClosureType name (``"COOPERATIVE_CLOSE"``, ...).
    """

    channel_point: str
    chan_id: int = 0
    remote_pubkey: str = ""
    capacity_sat: int = 0
    close_height: int = 0
    settled_balance_sat: int = 0
    time_locked_balance_sat: int = 0
    close_type: str = "COOPERATIVE_CLOSE"
    closing_tx_hash: str = ""
    open_initiator: str = "INITIATOR_UNKNOWN"
    close_initiator: str = "INITIATOR_UNKNOWN"


class Peer(_LndType, frozen=True, kw_only=True):
    """A connected peer (``ListPeers``)."""

    pubkey: str
    address: str = ""
    bytes_sent: int = 0
    bytes_recv: int = 0
    sat_sent: int = 0
    sat_recv: int = 0
    inbound: bool = False
    ping_time: int = 0
    sync_type: str = "UNKNOWN_SYNC"
    flap_count: int = 0


class NodeAddress(_LndType, frozen=True, kw_only=True):
    network: str = "tcp"
    addr: str = ""


class LightningNode(_LndType, frozen=True, kw_only=True):
    """``GetNodeInfo``: a node of the graph."""

    pubkey: str
    alias: str = ""
    color: str = ""
    last_update: int = 0
    addresses: list[NodeAddress] = msgspec.field(default_factory=list)
    num_channels: int = 0
    total_capacity_sat: int = 0


class ChannelFee(_LndType, frozen=True, kw_only=True):
    """One channel's forwarding fee (``FeeReport``); ``fee_rate`` is fee_per_mil / 1e6."""

    chan_id: int
    channel_point: str
    base_fee_msat: int = 0
    fee_per_mil: int = 0
    fee_rate: float = 0.0


class FeeReport(_LndType, frozen=True, kw_only=True):
    """``FeeReport``: the fee schedule and what forwarding earned (LND reports sums in sat)."""

    channel_fees: list[ChannelFee] = msgspec.field(default_factory=list)
    day_fee_sum_sat: int = 0
    week_fee_sum_sat: int = 0
    month_fee_sum_sat: int = 0


class ForwardingEvent(_LndType, frozen=True, kw_only=True):
    """One settled forward (``ForwardingHistory``)."""

    chan_id_in: int
    chan_id_out: int
    amt_in_msat: int = 0
    amt_out_msat: int = 0
    fee_msat: int = 0
    timestamp_ns: int = 0
    peer_alias_in: str = ""
    peer_alias_out: str = ""


class ForwardPage(_LndType, frozen=True, kw_only=True):
    """``ForwardingHistory``: a page; pass ``last_offset_index`` as the next index_offset."""

    forwarding_events: list[ForwardingEvent] = msgspec.field(default_factory=list)
    last_offset_index: int = 0


class SingleChanBackup(_LndType, frozen=True, kw_only=True):
    channel_point: str
    backup: str = ""


class ChanBackup(_LndType, frozen=True, kw_only=True):
    """``ExportAllChannelBackups``: the multi-channel backup (hex) and its channel points."""

    multi_chan_backup: str = ""
    chan_points: list[str] = msgspec.field(default_factory=list)
    single_chan_backups: list[SingleChanBackup] = msgspec.field(default_factory=list)
