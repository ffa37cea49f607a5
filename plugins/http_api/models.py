"""Request and response models of the http_api plugin's own endpoints.

They validate input (unknown fields are errors) and are the source of the OpenAPI
document's schemas.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_MSAT",
    "Balances",
    "ChannelClosed",
    "ChannelList",
    "ChannelOpen",
    "ChannelOpened",
    "ChannelOut",
    "CloseQuery",
    "DecodeRequest",
    "Decoded",
    "EventsQuery",
    "FiatInfo",
    "Health",
    "InvoiceChange",
    "InvoiceCreate",
    "InvoiceHistory",
    "InvoiceList",
    "InvoiceListQuery",
    "InvoiceOut",
    "NodeOut",
    "PaymentCreate",
    "PaymentList",
    "PaymentListQuery",
    "PaymentOut",
    "PendingChannelOut",
    "WaitQuery",
]

# 21 million BTC in msat: no amount may exceed the supply.
MAX_MSAT = 21_000_000 * 100_000_000 * 1000
HEX64 = r"^[0-9a-f]{64}$"
PUBKEY = r"^(02|03)[0-9a-f]{64}$"


class _Model(BaseModel):
    # Validators and serializers are built on first use: a daemon that never serves
    # an endpoint does not hold them.
    model_config = ConfigDict(defer_build=True)


class _Body(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Query(_Model):
    model_config = ConfigDict(extra="ignore", frozen=True)


# ---------------------------------------------------------------- invoices


class InvoiceCreate(_Body):
    """Give at most one amount: ``amount_msat``, ``amount_sat``, ``amount_btc``, or
    ``fiat_amount`` with ``fiat_currency``; none makes an any-amount invoice."""

    amount_msat: int | None = Field(None, ge=1, le=MAX_MSAT)
    amount_sat: int | None = Field(None, ge=1, le=MAX_MSAT // 1000)
    amount_btc: Decimal | None = Field(None, gt=0, le=21_000_000, decimal_places=11, allow_inf_nan=False)
    fiat_amount: Decimal | None = Field(None, gt=0, le=Decimal("1e12"), decimal_places=8, allow_inf_nan=False)
    fiat_currency: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR")
    memo: str = Field("", max_length=639)
    expiry: int | None = Field(None, ge=60, le=365 * 86400, description="seconds; default from config")
    private: bool = Field(False, description="include route hints for private channels")
    metadata: dict[str, Any] | None = Field(None, description="free-form object kept with the invoice")


class FiatInfo(_Model):
    currency: str
    amount: str | None
    exchange_rate: str | None


InvoiceStatus = Literal["pending", "accepted", "paid", "expired", "canceled"]


class InvoiceOut(_Model):
    payment_hash: str
    payment_request: str
    memo: str
    amount_msat: int
    amount_paid_msat: int
    status: InvoiceStatus
    created_at: int
    expires_at: int
    settled_at: int | None
    preimage: str | None
    add_index: int
    settle_index: int
    is_keysend: bool
    private: bool
    fiat: FiatInfo | None
    metadata: dict[str, Any] | None


class InvoiceList(_Model):
    invoices: list[InvoiceOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class InvoiceChange(_Model):
    event_id: int = Field(description="the journal id of the event that made the change")
    status: InvoiceStatus
    time: float
    amount_paid_msat: int


class InvoiceHistory(_Model):
    payment_hash: str
    changes: list[InvoiceChange]


class InvoiceListQuery(_Query):
    status: InvoiceStatus | None = None
    created_after: int | None = Field(None, ge=0, le=2**40, description="unix seconds, inclusive")
    created_before: int | None = Field(None, ge=0, le=2**40, description="unix seconds, exclusive")
    cursor: str | None = Field(None, min_length=1, max_length=200)
    limit: int = Field(100, ge=1, le=1000)


class WaitQuery(_Query):
    timeout: float = Field(30.0, ge=0, le=3600, description="seconds to wait for a final state")


# ---------------------------------------------------------------- decode, node, balances


class DecodeRequest(_Body):
    payment_request: str = Field(min_length=1, max_length=7089)


class Decoded(_Model):
    destination: str
    payment_hash: str
    amount_msat: int
    timestamp: int
    expiry: int
    expires_at: int
    description: str
    description_hash: str
    cltv_expiry: int
    payment_addr: str


class NodeOut(_Model):
    pubkey: str
    alias: str
    color: str
    version: str
    num_active_channels: int
    num_inactive_channels: int
    num_pending_channels: int
    num_peers: int
    block_height: int
    synced_to_chain: bool
    synced_to_graph: bool
    chain: str
    network: str
    uris: list[str]


class Balances(_Model):
    onchain_total_sat: int
    onchain_confirmed_sat: int
    onchain_unconfirmed_sat: int
    onchain_locked_sat: int
    channels_local_msat: int
    channels_remote_msat: int
    channels_unsettled_local_msat: int
    channels_pending_open_local_msat: int


# ---------------------------------------------------------------- payments


class PaymentCreate(_Body):
    payment_request: str = Field(min_length=1, max_length=7089)
    amount_msat: int | None = Field(
        None, ge=1, le=MAX_MSAT, description="only for invoices without an amount"
    )
    fee_limit_msat: int = Field(ge=0, le=MAX_MSAT, description="the most routing fees may cost")
    timeout_seconds: int = Field(60, ge=1, le=3600)
    max_parts: int = Field(1, ge=1, le=128)


PaymentStatus = Literal["in_flight", "succeeded", "failed"]


class PaymentOut(_Model):
    payment_hash: str
    status: PaymentStatus
    amount_msat: int
    fee_msat: int
    preimage: str | None
    payment_request: str
    failure_reason: str | None
    payment_index: int
    created_at_ns: int


class PaymentList(_Model):
    payments: list[PaymentOut]
    next_cursor: str | None


class PaymentListQuery(_Query):
    status: PaymentStatus | None = None
    cursor: str | None = Field(None, min_length=1, max_length=200)
    limit: int = Field(100, ge=1, le=1000)


# ---------------------------------------------------------------- channels


class ChannelOut(_Model):
    chan_id: str
    channel_point: str
    remote_pubkey: str
    capacity_sat: int
    local_balance_sat: int
    remote_balance_sat: int
    active: bool
    private: bool
    initiator: bool
    peer_alias: str


class PendingChannelOut(_Model):
    channel_point: str
    remote_pubkey: str
    capacity_sat: int
    local_balance_sat: int
    state: Literal["pending_open", "waiting_close", "force_closing"]
    closing_txid: str | None


class ChannelList(_Model):
    channels: list[ChannelOut]
    pending: list[PendingChannelOut]


class ChannelOpen(_Body):
    node_pubkey: str = Field(pattern=PUBKEY, description="33-byte compressed public key, hex")
    local_funding_amount_sat: int = Field(ge=20_000, le=MAX_MSAT // 1000)
    push_sat: int = Field(0, ge=0, le=MAX_MSAT // 1000)
    private: bool = False
    sat_per_vbyte: int | None = Field(None, ge=1, le=10_000)


class ChannelOpened(_Model):
    channel_point: str


class CloseQuery(_Query):
    force: bool = False
    sat_per_vbyte: int | None = Field(None, ge=1, le=10_000)


class ChannelClosed(_Model):
    channel_point: str
    closing_txid: str


# ---------------------------------------------------------------- events, health


class EventsQuery(_Query):
    types: str | None = Field(
        None,
        max_length=2000,
        description="comma-separated event types (invoice.settled) or families (invoice.*)",
    )
    last_event_id: int | None = Field(
        None, ge=0, description="resume after this journal id (or Last-Event-ID)"
    )


class Health(_Model):
    ok: bool
    lnd: dict[str, Any]
    database: dict[str, Any]
    journal: dict[str, Any]
    plugins: dict[str, Any]
    checks: dict[str, Any]
