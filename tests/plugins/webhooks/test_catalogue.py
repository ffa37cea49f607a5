"""Event names, subscription globs and payloads."""

from __future__ import annotations

import pytest
from lightningd_py.plugins.webhooks.catalogue import (
    JOURNAL_TO_WEBHOOK,
    WEBHOOK_EVENTS,
    EventFilter,
    default_payload,
    pattern_problem,
    webhook_event_name,
)

from lightningd_py.events import (
    ForwardSettled,
    InvoiceAccepted,
    InvoiceCreated,
    InvoiceSettled,
    NodeStateChanged,
    PaymentSucceeded,
    PeerOnline,
    event_type_names,
)


def test_mapping_uses_real_journal_types_and_covers_the_catalogue() -> None:
    assert set(JOURNAL_TO_WEBHOOK) <= set(event_type_names())
    assert set(JOURNAL_TO_WEBHOOK.values()) | {"node.reachable", "node.unreachable"} == set(WEBHOOK_EVENTS)


def test_names() -> None:
    assert webhook_event_name(InvoiceSettled(payment_hash="a")) == "payment.confirmed"
    assert webhook_event_name(PaymentSucceeded(payment_hash="a")) == "payment.sent"
    assert webhook_event_name(InvoiceCreated(payment_hash="a")) == "invoice.created"
    assert webhook_event_name(InvoiceAccepted(payment_hash="a")) is None
    assert webhook_event_name(PeerOnline(pubkey="p")) is None


@pytest.mark.parametrize(
    ("reachable", "before", "expected"),
    [
        (False, None, "node.unreachable"),
        (True, None, None),
        (False, True, "node.unreachable"),
        (True, False, "node.reachable"),
        (True, True, None),
        (False, False, None),
    ],
)
def test_node_state_only_on_change(reachable: bool, before: bool | None, expected: str | None) -> None:
    event = NodeStateChanged(state="X", reachable=reachable)
    assert webhook_event_name(event, before) == expected


def test_globs_never_catch_forwards_unless_named() -> None:
    assert "forward.settled" not in EventFilter(["*"])
    assert "forward.settled" not in EventFilter(["*.settled"])
    assert "forward.settled" in EventFilter(["forward.*"])
    assert "forward.settled" in EventFilter(["forward.settled"])
    assert EventFilter(["channel.*"]).names == {
        "channel.opened",
        "channel.closed",
        "channel.active",
        "channel.inactive",
    }
    assert EventFilter(["*"]).names == set(WEBHOOK_EVENTS) - {"forward.settled"}


@pytest.mark.parametrize("pattern", ["invoice.paid", "chanel.*", "payment", ""])
def test_unknown_patterns_are_reported(pattern: str) -> None:
    assert "unknown event" in (pattern_problem(pattern) or "")


@pytest.mark.parametrize("pattern", ["*", "payment.*", "node.*", "forward.settled", "invoice.created"])
def test_known_patterns_pass(pattern: str) -> None:
    assert pattern_problem(pattern) is None


def test_default_payload() -> None:
    event = InvoiceSettled(id=5, payment_hash="ab", creation_date=100, expiry=60, amt_paid_msat=7)
    data = default_payload(event)
    assert data["event_id"] == 5 and data["expires_at"] == 160 and data["amt_paid_msat"] == 7
    assert "type" not in data and "time" not in data and "id" not in data
    forward = default_payload(
        ForwardSettled(incoming_chan_id=1, outgoing_chan_id=2, amt_in_msat=11, amt_out_msat=10)
    )
    assert forward["fee_msat"] == 1
    assert forward["incoming_chan_id"] == "1" and forward["timestamp_ns"] == "0"
