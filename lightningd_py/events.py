"""The event model plugins see.

Stream readers convert LND's protobuf messages into these plain frozen types at the
edge; nothing past the edge sees protobuf. Every event is journaled before any plugin
sees it, and carries the journal id it was given (``id``), which is stable across
redeliveries and restarts: use it to make hooks idempotent.

Amounts are integers in millisatoshi (``*_msat``) or satoshi (``*_sat``); times are
UTC unix seconds (``time``, ``*_date``) or nanoseconds (``*_ns``) as LND reports them.
"""

from __future__ import annotations

import time as _time
from typing import Any, ClassVar, Union

import msgspec

__all__ = [
    "ALL_EVENT_TYPES",
    "REBALANCE_MEMO_PREFIX",
    "BackupEvent",
    "ChannelActive",
    "ChannelBackupUpdated",
    "ChannelClosed",
    "ChannelEvent",
    "ChannelInactive",
    "ChannelOpened",
    "ChannelPendingOpen",
    "CustomEvent",
    "Event",
    "ForwardEvent",
    "ForwardFailed",
    "ForwardSettled",
    "InvoiceAccepted",
    "InvoiceCanceled",
    "InvoiceCreated",
    "InvoiceEvent",
    "InvoiceExpired",
    "InvoiceSettled",
    "NodeStateChanged",
    "NodeStateEvent",
    "PaymentEvent",
    "PaymentFailed",
    "PaymentSucceeded",
    "PeerEvent",
    "PeerOffline",
    "PeerOnline",
    "RebalanceEvent",
    "RebalanceFailed",
    "RebalanceSucceeded",
    "decode_event",
    "encode_event",
    "event_to_dict",
    "event_to_json",
    "event_type_names",
]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event.

    :ivar id: the journal id, assigned when the event is journaled (0 before that).
    :ivar time: when the daemon observed the event, UTC unix seconds.
    """

    hook: ClassVar[str] = "ldp_event"

    id: int = 0
    time: float = msgspec.field(default_factory=_time.time)

    @property
    def type(self) -> str:
        """The event's type name, e.g. ``"invoice.settled"``."""
        return type(self).__struct_config__.tag  # type: ignore[return-value]

    def dedupe_key(self) -> str | None:
        """A key that is the same for two observations of the same fact.

        The journal keeps only the first event with a given key, which is how
        replays from LND and reconciliation after a reconnect never journal a fact
        twice. None means the event is never deduplicated.
        """
        return None

    def dedupe_order(self) -> int:
        """A number that grows with time and is the same for every observation of the
        fact (LND's add index for invoices), or 0. The journal stores the keys of
        events that have one in its order, side by side; changing what an event type
        returns here needs a journal migration, or its earlier keys are not found."""
        return 0


# ---------------------------------------------------------------- invoices


class InvoiceEvent(Event, frozen=True, kw_only=True):
    """An invoice of this node changed state. Fields are the invoice as it was then."""

    hook: ClassVar[str] = "ldp_invoice_event"

    payment_hash: str
    payment_request: str = ""
    memo: str = ""
    value_msat: int = 0
    amt_paid_msat: int = 0
    creation_date: int = 0
    expiry: int = 0
    settle_date: int = 0
    add_index: int = 0
    settle_index: int = 0
    preimage: str = ""
    is_keysend: bool = False
    private: bool = False

    @property
    def expires_at(self) -> int:
        """UTC unix time at which the invoice expires."""
        return self.creation_date + self.expiry

    def dedupe_key(self) -> str | None:
        return f"{self.type}:{self.payment_hash}"

    def dedupe_order(self) -> int:
        return self.add_index


class InvoiceCreated(InvoiceEvent, frozen=True, kw_only=True, tag="invoice.created"):
    """A new invoice was added (LND state OPEN)."""


class InvoiceAccepted(InvoiceEvent, frozen=True, kw_only=True, tag="invoice.accepted"):
    """A hold invoice's HTLCs are locked in and await settle or cancel (LND ACCEPTED)."""


class InvoiceSettled(InvoiceEvent, frozen=True, kw_only=True, tag="invoice.settled"):
    """The invoice was paid (LND SETTLED); ``amt_paid_msat`` is what was received."""


class InvoiceCanceled(InvoiceEvent, frozen=True, kw_only=True, tag="invoice.canceled"):
    """The invoice was canceled on request before it expired."""


class InvoiceExpired(InvoiceEvent, frozen=True, kw_only=True, tag="invoice.expired"):
    """The invoice's expiry passed unpaid (LND cancels such invoices silently)."""


# ---------------------------------------------------------------- payments


class PaymentEvent(Event, frozen=True, kw_only=True):
    """An outgoing payment of this node reached a final state."""

    hook: ClassVar[str] = "ldp_payment_event"

    payment_hash: str
    payment_index: int = 0
    value_msat: int = 0
    fee_msat: int = 0
    payment_request: str = ""
    payment_preimage: str = ""
    creation_time_ns: int = 0
    failure_reason: str = ""
    destination: str = ""

    def dedupe_key(self) -> str | None:
        return f"{self.type}:{self.payment_hash}:{self.payment_index}"


class PaymentSucceeded(PaymentEvent, frozen=True, kw_only=True, tag="payment.succeeded"):
    """The payment succeeded; ``payment_preimage`` proves it."""


class PaymentFailed(PaymentEvent, frozen=True, kw_only=True, tag="payment.failed"):
    """The payment failed for good; ``failure_reason`` is LND's PaymentFailureReason name."""


# ---------------------------------------------------------------- channels


class ChannelEvent(Event, frozen=True, kw_only=True):
    """A channel of this node changed."""

    hook: ClassVar[str] = "ldp_channel_event"

    channel_point: str
    chan_id: int = 0
    remote_pubkey: str = ""
    capacity_sat: int = 0
    local_balance_sat: int = 0
    remote_balance_sat: int = 0
    private: bool = False
    initiator: bool = False

    def dedupe_key(self) -> str | None:
        return f"{self.type}:{self.channel_point}"


class ChannelPendingOpen(ChannelEvent, frozen=True, kw_only=True, tag="channel.pending"):
    """A channel's funding transaction was broadcast; it awaits confirmation."""


class ChannelOpened(ChannelEvent, frozen=True, kw_only=True, tag="channel.opened"):
    """A channel is open and usable."""


class ChannelClosed(ChannelEvent, frozen=True, kw_only=True, tag="channel.closed"):
    """A channel was closed; ``close_type`` is LND's ClosureType name."""

    close_type: str = ""
    closing_tx_hash: str = ""
    settled_balance_sat: int = 0
    close_height: int = 0


class ChannelActive(ChannelEvent, frozen=True, kw_only=True, tag="channel.active"):
    """A channel became active (its peer is online and the link is up)."""

    def dedupe_key(self) -> str | None:
        return None


class ChannelInactive(ChannelEvent, frozen=True, kw_only=True, tag="channel.inactive"):
    """A channel became inactive."""

    def dedupe_key(self) -> str | None:
        return None


# ---------------------------------------------------------------- forwards


class ForwardEvent(Event, frozen=True, kw_only=True):
    """An HTLC this node forwarded was resolved."""

    hook: ClassVar[str] = "ldp_forward_event"

    incoming_chan_id: int
    outgoing_chan_id: int
    incoming_htlc_id: int = 0
    outgoing_htlc_id: int = 0
    amt_in_msat: int = 0
    amt_out_msat: int = 0
    timestamp_ns: int = 0

    @property
    def fee_msat(self) -> int:
        """What this node earned for the forward."""
        return self.amt_in_msat - self.amt_out_msat

    def dedupe_key(self) -> str | None:
        if self.incoming_htlc_id == 0 and self.outgoing_htlc_id == 0:
            # From ForwardingHistory, which carries no HTLC ids: the time tells forwards apart.
            return f"{self.type}:{self.incoming_chan_id}:{self.outgoing_chan_id}:t{self.timestamp_ns}"
        return (
            f"{self.type}:{self.incoming_chan_id}:{self.incoming_htlc_id}:"
            f"{self.outgoing_chan_id}:{self.outgoing_htlc_id}"
        )


class ForwardSettled(ForwardEvent, frozen=True, kw_only=True, tag="forward.settled"):
    """A forward settled: the fee is earned."""


class ForwardFailed(ForwardEvent, frozen=True, kw_only=True, tag="forward.failed"):
    """A forward failed; ``failure`` names why, as far as LND says."""

    failure: str = ""


# ---------------------------------------------------------------- peers, backups, node


class PeerEvent(Event, frozen=True, kw_only=True):
    """A peer connected or disconnected."""

    hook: ClassVar[str] = "ldp_peer_event"

    pubkey: str


class PeerOnline(PeerEvent, frozen=True, kw_only=True, tag="peer.online"):
    """A peer connected."""


class PeerOffline(PeerEvent, frozen=True, kw_only=True, tag="peer.offline"):
    """A peer disconnected."""


class BackupEvent(Event, frozen=True, kw_only=True):
    """LND published a new static channel backup."""

    hook: ClassVar[str] = "ldp_backup_event"

    multi_chan_backup: bytes
    chan_points: list[str] = msgspec.field(default_factory=list)


class ChannelBackupUpdated(BackupEvent, frozen=True, kw_only=True, tag="backup.updated"):
    """The multi-channel backup covering every open channel changed."""


class NodeStateEvent(Event, frozen=True, kw_only=True):
    """The LND node's reachability or state changed."""

    hook: ClassVar[str] = "ldp_node_state"

    state: str
    reachable: bool
    detail: str = ""


class NodeStateChanged(NodeStateEvent, frozen=True, kw_only=True, tag="node.state"):
    """``state`` is LND's WalletState name (``SERVER_ACTIVE``, ``LOCKED``, ...) or
    ``UNREACHABLE`` when LND cannot be reached at all."""


# ---------------------------------------------------------------- plugin events


REBALANCE_MEMO_PREFIX = "rebalance "
"""How the memo of every invoice the rebalancer pays itself begins: other plugins tell
those invoices from the node's income by it (with the rebalance's payment hash)."""


class RebalanceEvent(Event, frozen=True, kw_only=True):
    """A rebalance run by the rebalancer plugin finished."""

    hook: ClassVar[str] = "ldp_event"

    rebalance_id: str
    outgoing_chan_id: int
    incoming_chan_id: int
    amount_msat: int
    fee_msat: int = 0
    attempts: int = 0
    failure_reason: str = ""
    payment_hash: str = ""
    dry_run: bool = False

    def dedupe_key(self) -> str | None:
        return f"{self.type}:{self.rebalance_id}"


class RebalanceSucceeded(RebalanceEvent, frozen=True, kw_only=True, tag="rebalance.succeeded"):
    """Liquidity moved; ``fee_msat`` is what it cost."""


class RebalanceFailed(RebalanceEvent, frozen=True, kw_only=True, tag="rebalance.failed"):
    """No attempt succeeded; ``failure_reason`` says why."""


class CustomEvent(Event, frozen=True, kw_only=True, tag="custom"):
    """An event a third-party plugin emitted.

    :ivar name: the plugin's own event name, e.g. ``"loyalty.points_awarded"``.
    :ivar source: the emitting plugin's name (set by the daemon).
    :ivar key: optional dedupe key: a second event with the same name and key is dropped.
    """

    hook: ClassVar[str] = "ldp_event"

    name: str
    source: str = ""
    key: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    def dedupe_key(self) -> str | None:
        return f"custom:{self.source}:{self.name}:{self.key}" if self.key else None


ALL_EVENT_TYPES: tuple[type[Event], ...] = (
    InvoiceCreated,
    InvoiceAccepted,
    InvoiceSettled,
    InvoiceCanceled,
    InvoiceExpired,
    PaymentSucceeded,
    PaymentFailed,
    ChannelPendingOpen,
    ChannelOpened,
    ChannelClosed,
    ChannelActive,
    ChannelInactive,
    ForwardSettled,
    ForwardFailed,
    PeerOnline,
    PeerOffline,
    ChannelBackupUpdated,
    NodeStateChanged,
    RebalanceSucceeded,
    RebalanceFailed,
    CustomEvent,
)

AnyEvent = Union[ALL_EVENT_TYPES]  # type: ignore[valid-type]  # noqa: UP007 (a union over a tuple)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyEvent)
_json_encoder = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    """Serialize an event for the journal (msgpack, tagged by type)."""
    return _encoder.encode(event)


def decode_event(data: bytes, event_id: int) -> Event:
    """Read an event back from the journal, with its journal id."""
    event = _decoder.decode(data)
    return msgspec.structs.replace(event, id=event_id)


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of the event (bytes as base64), including ``type``."""
    return msgspec.to_builtins(event)


def event_to_json(event: Event) -> bytes:
    """The event as JSON bytes, including ``type``."""
    return _json_encoder.encode(event)


def event_type_names() -> list[str]:
    """Every event type name, e.g. ``["invoice.created", ...]``."""
    return [cls.__struct_config__.tag for cls in ALL_EVENT_TYPES]  # type: ignore[misc]
