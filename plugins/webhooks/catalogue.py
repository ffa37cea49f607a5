"""The webhook event catalogue: which journal events become which webhook events, how
endpoint subscriptions (exact names and globs) select them, and the default payload.

Webhook names are the merchant's vocabulary, not the journal's: an invoice of ours
being paid is ``payment.confirmed`` (journal ``invoice.settled``), an outgoing payment
that succeeded is ``payment.sent`` (journal ``payment.succeeded``), and LND becoming
unreachable or reachable again is ``node.unreachable`` / ``node.reachable`` (journal
``node.state``, only when reachability changes).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from lightningd_py.events import (
    Event,
    ForwardEvent,
    InvoiceEvent,
    NodeStateEvent,
    event_to_dict,
)

__all__ = [
    "HIGH_VOLUME_EVENTS",
    "JOURNAL_TO_WEBHOOK",
    "TEST_EVENT",
    "WEBHOOK_EVENTS",
    "EventFilter",
    "default_payload",
    "iso_timestamp",
    "pattern_problem",
    "webhook_event_name",
]

# Journal event type -> webhook event name (node.state is handled apart: it depends on
# the previous reachability).
JOURNAL_TO_WEBHOOK: Mapping[str, str] = {
    "invoice.created": "invoice.created",
    "invoice.settled": "payment.confirmed",
    "invoice.expired": "invoice.expired",
    "invoice.canceled": "invoice.canceled",
    "payment.succeeded": "payment.sent",
    "payment.failed": "payment.failed",
    "channel.opened": "channel.opened",
    "channel.closed": "channel.closed",
    "channel.active": "channel.active",
    "channel.inactive": "channel.inactive",
    "rebalance.succeeded": "rebalance.succeeded",
    "rebalance.failed": "rebalance.failed",
    "forward.settled": "forward.settled",
}

WEBHOOK_EVENTS: tuple[str, ...] = (
    "invoice.created",
    "payment.confirmed",
    "invoice.expired",
    "invoice.canceled",
    "payment.sent",
    "payment.failed",
    "channel.opened",
    "channel.closed",
    "channel.active",
    "channel.inactive",
    "rebalance.succeeded",
    "rebalance.failed",
    "node.unreachable",
    "node.reachable",
    "forward.settled",
)

# Sent only to endpoints that name their family ("forward.settled" or "forward.*"); a
# catch-all such as "*" would otherwise flood a merchant backend with routing traffic.
HIGH_VOLUME_EVENTS: frozenset[str] = frozenset({"forward.settled"})

# The type of the event sent by the "send a test event" API; never matched by config.
TEST_EVENT = "webhook.test"


def webhook_event_name(event: Event, previously_reachable: bool | None = None) -> str | None:
    """The webhook name for a journal event, or None when it has none.

    :param previously_reachable: for ``node.state``, the reachability last seen (None
        when unknown); a state that does not change reachability has no webhook, and
        with nothing seen before only ``node.unreachable`` is worth telling.
    """
    if isinstance(event, NodeStateEvent):
        if event.reachable == previously_reachable:
            return None
        if event.reachable:
            return "node.reachable" if previously_reachable is False else None
        return "node.unreachable"
    return JOURNAL_TO_WEBHOOK.get(event.type)


def pattern_problem(pattern: str) -> str | None:
    """Why an endpoint's event pattern is not acceptable, or None when it is."""
    if not any(_glob_matches(pattern, name) for name in WEBHOOK_EVENTS):
        return (
            f"unknown event {pattern!r}; expected one of {', '.join(WEBHOOK_EVENTS)}, "
            'or a glob matching some of them such as "channel.*"'
        )
    return None


def _glob_matches(pattern: str, name: str) -> bool:
    if name in HIGH_VOLUME_EVENTS and pattern != name:
        # Only a pattern naming the family literally, like "forward.*", selects it.
        family = name.split(".", 1)[0] + "."
        if not pattern.startswith(family):
            return False
    return fnmatch.fnmatchcase(name, pattern)


class EventFilter:
    """The set of webhook events one endpoint subscribed to, resolved once."""

    __slots__ = ("names",)

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self.names: frozenset[str] = frozenset(
            name for name in WEBHOOK_EVENTS if any(_glob_matches(p, name) for p in patterns)
        )

    def __contains__(self, name: object) -> bool:
        return name in self.names


def iso_timestamp(unix: float) -> str:
    """RFC 3339 UTC with microseconds, as the Standard Webhooks examples use."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# 64-bit values exceed what a JSON number holds exactly in JavaScript (2^53): sent as
# decimal strings, as LND's own REST API does.
_UINT64_FIELDS = frozenset(
    {"chan_id", "incoming_chan_id", "outgoing_chan_id", "timestamp_ns", "creation_time_ns"}
)


def default_payload(event: Event) -> dict[str, Any]:
    """The ``data`` object of a webhook: the event's fields (64-bit ids and nanosecond
    times as strings), its journal id as ``event_id``, and the derived values a backend
    would otherwise compute."""
    data = event_to_dict(event)
    data.pop("type", None)
    data.pop("time", None)
    data["event_id"] = data.pop("id", event.id)
    for key in _UINT64_FIELDS.intersection(data):
        data[key] = str(data[key])
    if isinstance(event, InvoiceEvent):
        data["expires_at"] = event.expires_at
    elif isinstance(event, ForwardEvent):
        data["fee_msat"] = event.fee_msat
    return data
