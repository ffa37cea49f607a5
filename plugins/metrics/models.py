"""Response models of the analytics endpoints, for the OpenAPI document.

The handlers build plain dicts; these models describe them exactly (the API's
schema-driven tests check every response against them). Amounts: ``*_msat`` exact
integers, ``*_sat`` = msat / 1000; times ISO 8601 UTC.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ChannelDetail",
    "ChannelsOut",
    "FeesOut",
    "HistoryPage",
    "PaymentsOut",
    "ReportOut",
    "SummaryOut",
]


class _Out(BaseModel):
    # Built on first use: a daemon that never serves a report does not hold them.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Window(_Out):
    start: str
    end: str


class InvoiceStats(_Out):
    created: int
    settled: int
    received_msat: int
    received_sat: float
    canceled: int
    expired: int
    average_sat: float | None


class PaymentStats(_Out):
    succeeded: int
    failed: int
    success_rate: float | None
    sent_msat: int
    sent_sat: float
    fees_msat: int
    fees_sat: float
    fee_ppm: float | None
    average_sat: float | None


class ForwardStats(_Out):
    settled: int
    failed: int
    success_rate: float | None
    volume_msat: int
    volume_sat: float
    fees_earned_msat: int
    fees_earned_sat: float


class RebalanceStats(_Out):
    succeeded: int
    failed: int
    dry_run: int
    moved_msat: int
    moved_sat: float
    fees_msat: int
    fees_sat: float


class FeeStats(_Out):
    earned_msat: int
    earned_sat: float
    paid_msat: int
    paid_sat: float
    rebalance_msat: int
    rebalance_sat: float
    net_msat: int
    net_sat: float


class Fiat(BaseModel):
    """``currency``, ``rate`` (price of 1 BTC, a decimal string) and each amount of the
    endpoint in that currency (a number, to the cent)."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    currency: str
    rate: str


class NodeOut(_Out):
    alias: str
    pubkey: str
    version: str
    network: str
    block_height: int
    synced_to_chain: bool
    synced_to_graph: bool
    peers: int
    snapshot_time: str | None
    lnd_state: str
    lnd_active: bool
    lnd_detail: str


class Balances(_Out):
    wallet_confirmed_sat: int
    wallet_unconfirmed_sat: int
    wallet_locked_sat: int
    channels_local_sat: int
    channels_remote_sat: int
    channels_capacity_sat: int
    total_sat: int


class ChannelHealth(_Out):
    active: int
    inactive: int
    pending: int
    imbalanced: int
    pending_htlcs: int


class Today(_Out):
    window: Window
    invoices: InvoiceStats
    payments: PaymentStats
    forwards: ForwardStats
    rebalances: RebalanceStats
    fees: FeeStats


class SummaryOut(_Out):
    node: NodeOut
    balances: Balances
    channels: ChannelHealth
    today: Today


class PaymentsOut(_Out):
    window: Window
    outgoing: PaymentStats
    incoming: InvoiceStats
    fiat: Fiat | None


class Performance(_Out):
    forwards_out: int
    forwards_in: int
    forwards_failed_out: int
    volume_out_msat: int
    volume_in_msat: int
    fees_earned_msat: int
    rebalanced_out_msat: int
    rebalanced_in_msat: int
    rebalance_fees_msat: int
    samples: int
    uptime: float | None
    balance_ratio_avg: float | None
    balance_ratio_min: float | None
    balance_ratio_max: float | None
    volume_out_sat: float
    fees_earned_sat: float


class ChannelRow(_Out):
    chan_id: int
    scid: str
    channel_point: str
    peer_pubkey: str
    peer_alias: str
    capacity_sat: int
    opened: str | None
    closed: str | None
    open: bool
    active: bool
    local_balance_sat: int | None = None
    remote_balance_sat: int | None = None
    balance_ratio: float | None = None
    pending_htlcs: int | None = None
    performance: Performance


class ChannelTotals(_Out):
    open: int
    active: int
    inactive: int
    pending: int
    capacity_sat: int
    local_balance_sat: int
    remote_balance_sat: int
    imbalanced: int
    average_balance_ratio: float | None
    forwards: int
    fees_earned_msat: int


class ChannelsOut(_Out):
    window: Window
    totals: ChannelTotals
    channels: list[ChannelRow]


class SeriesPoint(_Out):
    time: float
    local_sat: int
    remote_sat: int
    capacity_sat: int
    balance_ratio: float | None
    uptime: float
    samples: int


class ChannelDetail(ChannelRow):
    window: Window
    balance_series: list[SeriesPoint]


class OnchainComparison(_Out):
    available: bool
    target_conf: int
    fee_rate_sat_per_vbyte: float | None
    tx_vbytes: int
    payments: int
    onchain_cost_sat: float | None
    lightning_fees_sat: float
    savings_sat: float | None


class FeesOut(FeeStats):
    window: Window
    earned_ppm: float | None
    paid_ppm: float | None
    onchain_comparison: OnchainComparison
    fiat: Fiat | None


class HistoryItem(_Out):
    id: str
    kind: str
    status: str
    time: str
    created: str
    amount_msat: int
    amount_sat: float
    fee_msat: int
    payment_hash: str | None
    chan_in: int | None
    chan_out: int | None
    description: str


class HistoryPage(_Out):
    items: list[HistoryItem]
    next_cursor: str | None


class TopChannel(Performance):
    chan_id: int
    scid: str


class Bucket(_Out):
    start: str
    invoices_settled: int
    received_msat: int
    payments_succeeded: int
    payments_failed: int
    sent_msat: int
    forwards_settled: int
    forwarded_msat: int
    fees_earned_msat: int
    fees_paid_msat: int
    rebalance_fees_msat: int
    net_fees_msat: int


class ReportOut(_Out):
    period: str
    window: Window
    invoices: InvoiceStats
    payments: PaymentStats
    forwards: ForwardStats
    rebalances: RebalanceStats
    fees: FeeStats
    top_channels: list[TopChannel]
    breakdown: list[Bucket]
    fiat: Fiat | None
