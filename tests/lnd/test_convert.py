"""protobuf -> event conversion (lightningd_py.lnd.convert), on LND's real message types."""

from __future__ import annotations

import hashlib
import time

import pytest

from lightningd_py import events as ev
from lightningd_py.lnd import convert
from lightningd_py.lnd.reconcile import IndexFloor, RecentForwards
from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2

PREIMAGE = bytes(range(32))
HASH = hashlib.sha256(PREIMAGE).digest()
# A real mainnet funding transaction, as the explorer displays its txid.
TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"


def invoice(state: int = convert.OPEN, **fields: object) -> ln.Invoice:
    base: dict[str, object] = {
        "r_hash": HASH,
        "r_preimage": PREIMAGE,
        "memo": "coffee",
        "value": 1,
        "value_msat": 1500,
        "creation_date": 1_700_000_000,
        "expiry": 3600,
        "payment_request": "lnbcrt15n1...",
        "add_index": 7,
        "state": state,
    }
    base.update(fields)
    return ln.Invoice(**base)  # type: ignore[arg-type]


def test_channel_point_from_bytes_is_reversed_display_txid() -> None:
    internal = bytes.fromhex(TXID)[::-1]
    point = ln.ChannelPoint(funding_txid_bytes=internal, output_index=1)
    assert convert.channel_point_str(point) == f"{TXID}:1"
    assert convert.txid_from_bytes(internal) == TXID


def test_channel_point_from_string_is_kept() -> None:
    point = ln.ChannelPoint(funding_txid_str=TXID, output_index=0)
    assert convert.channel_point_str(point) == f"{TXID}:0"


def test_open_invoice_is_created_only_and_hides_preimage() -> None:
    events = convert.invoice_events(invoice(), now=5.0)
    assert [type(e) for e in events] == [ev.InvoiceCreated]
    created = events[0]
    assert created.payment_hash == HASH.hex()
    assert created.value_msat == 1500
    assert created.expires_at == 1_700_003_600
    assert created.preimage == ""
    assert created.time == 5.0
    assert created.dedupe_key() == f"invoice.created:{HASH.hex()}"


def test_settled_invoice_yields_created_and_settled_with_preimage() -> None:
    inv = invoice(convert.SETTLED, amt_paid_msat=1500, settle_index=3, settle_date=1_700_000_100)
    created, settled = convert.invoice_events(inv)
    assert isinstance(created, ev.InvoiceCreated) and isinstance(settled, ev.InvoiceSettled)
    assert created.amt_paid_msat == 0 and created.settle_index == 0
    assert settled.amt_paid_msat == 1500 and settled.settle_index == 3
    assert settled.preimage == PREIMAGE.hex()
    assert convert.invoice_events(inv, now=1.0, created=False) == [
        ev.InvoiceSettled(
            **{f: getattr(settled, f) for f in settled.__struct_fields__ if f != "time"}, time=1.0
        )
    ]


def test_accepted_invoice_yields_accepted() -> None:
    inv = invoice(convert.ACCEPTED, r_preimage=b"")
    assert convert.invoice_is_hold(inv)
    assert [type(e) for e in convert.invoice_events(inv)] == [ev.InvoiceCreated, ev.InvoiceAccepted]


def test_canceled_before_expiry_is_canceled_after_is_expired() -> None:
    inv = invoice(convert.CANCELED)
    before = convert.invoice_closed_event(inv, observed_at=1_700_000_010)
    after = convert.invoice_closed_event(inv, observed_at=1_700_003_600)
    assert isinstance(before, ev.InvoiceCanceled)
    assert isinstance(after, ev.InvoiceExpired)
    assert before.preimage == "" and after.preimage == ""


def test_regular_invoice_is_not_hold() -> None:
    assert not convert.invoice_is_hold(invoice())
    assert not convert.invoice_is_hold(invoice(r_preimage=b"", is_keysend=True))


def test_payment_succeeded_and_failed() -> None:
    hop = ln.Hop(pub_key="02" + "ab" * 32)
    payment = ln.Payment(
        payment_hash=HASH.hex(),
        payment_preimage=PREIMAGE.hex(),
        value_msat=10_000,
        fee_msat=12,
        status=ln.Payment.SUCCEEDED,
        payment_index=9,
        creation_time_ns=123,
        htlcs=[ln.HTLCAttempt(route=ln.Route(hops=[hop]))],
    )
    ok = convert.payment_event(payment)
    assert isinstance(ok, ev.PaymentSucceeded)
    assert (ok.value_msat, ok.fee_msat, ok.payment_index) == (10_000, 12, 9)
    assert ok.destination == hop.pub_key and ok.payment_preimage == PREIMAGE.hex()

    failed = ln.Payment(
        payment_hash=HASH.hex(),
        payment_preimage="00" * 32,
        status=ln.Payment.FAILED,
        failure_reason=ln.FAILURE_REASON_NO_ROUTE,
        payment_index=10,
    )
    bad = convert.payment_event(failed)
    assert isinstance(bad, ev.PaymentFailed)
    assert bad.failure_reason == "FAILURE_REASON_NO_ROUTE" and bad.payment_preimage == ""
    assert convert.payment_event(ln.Payment(status=ln.Payment.IN_FLIGHT)) is None


def test_channel_events() -> None:
    chan = ln.Channel(
        channel_point=f"{TXID}:0",
        chan_id=123,
        remote_pubkey="03" + "cd" * 32,
        capacity=1_000_000,
        local_balance=600_000,
        remote_balance=390_000,
        initiator=True,
    )
    opened = convert.channel_event(
        ln.ChannelEventUpdate(type=ln.ChannelEventUpdate.OPEN_CHANNEL, open_channel=chan)
    )
    assert isinstance(opened, ev.ChannelOpened)
    assert opened.dedupe_key() == f"channel.opened:{TXID}:0"
    assert (opened.capacity_sat, opened.local_balance_sat, opened.initiator) == (1_000_000, 600_000, True)

    point = ln.ChannelPoint(funding_txid_bytes=bytes.fromhex(TXID)[::-1], output_index=0)
    active = convert.channel_event(
        ln.ChannelEventUpdate(type=ln.ChannelEventUpdate.ACTIVE_CHANNEL, active_channel=point)
    )
    inactive = convert.channel_event(
        ln.ChannelEventUpdate(type=ln.ChannelEventUpdate.INACTIVE_CHANNEL, inactive_channel=point)
    )
    assert isinstance(active, ev.ChannelActive) and active.channel_point == f"{TXID}:0"
    assert isinstance(inactive, ev.ChannelInactive) and inactive.channel_point == f"{TXID}:0"

    pending = convert.channel_event(
        ln.ChannelEventUpdate(
            type=ln.ChannelEventUpdate.PENDING_OPEN_CHANNEL,
            pending_open_channel=ln.PendingUpdate(txid=bytes.fromhex(TXID)[::-1], output_index=2),
        )
    )
    assert isinstance(pending, ev.ChannelPendingOpen) and pending.channel_point == f"{TXID}:2"

    summary = ln.ChannelCloseSummary(
        channel_point=f"{TXID}:0",
        chan_id=123,
        closing_tx_hash="ee" * 32,
        capacity=1_000_000,
        settled_balance=599_000,
        close_height=800,
        close_type=ln.ChannelCloseSummary.REMOTE_FORCE_CLOSE,
        open_initiator=ln.INITIATOR_LOCAL,
    )
    closed = convert.channel_event(
        ln.ChannelEventUpdate(type=ln.ChannelEventUpdate.CLOSED_CHANNEL, closed_channel=summary)
    )
    assert isinstance(closed, ev.ChannelClosed)
    assert closed.close_type == "REMOTE_FORCE_CLOSE" and closed.settled_balance_sat == 599_000
    assert closed.initiator
    resolved = ln.ChannelEventUpdate(
        type=ln.ChannelEventUpdate.FULLY_RESOLVED_CHANNEL, fully_resolved_channel=point
    )
    assert convert.channel_event(resolved) is None


def test_closed_channel_reconciliation_includes_opening_unless_funding_canceled() -> None:
    summary = ln.ChannelCloseSummary(channel_point=f"{TXID}:1", capacity=5, close_type=0)
    assert [type(e) for e in convert.closed_channel_events(summary)] == [ev.ChannelOpened, ev.ChannelClosed]
    canceled = ln.ChannelCloseSummary(
        channel_point=f"{TXID}:1", close_type=ln.ChannelCloseSummary.FUNDING_CANCELED
    )
    assert [type(e) for e in convert.closed_channel_events(canceled)] == [ev.ChannelClosed]


def test_pending_open_from_pending_channels() -> None:
    pending = ln.PendingChannelsResponse.PendingOpenChannel(
        channel=ln.PendingChannelsResponse.PendingChannel(
            remote_node_pub="02" + "11" * 32,
            channel_point=f"{TXID}:3",
            capacity=200_000,
            initiator=ln.INITIATOR_LOCAL,
        )
    )
    event = convert.pending_open_event(pending)
    assert event.channel_point == f"{TXID}:3" and event.initiator and event.capacity_sat == 200_000


def test_forward_from_history_prefers_msat_fields() -> None:
    fwd = ln.ForwardingEvent(
        chan_id_in=1,
        chan_id_out=2,
        amt_in=10,
        amt_out=9,
        amt_in_msat=10_001,
        amt_out_msat=9_000,
        timestamp_ns=77,
    )
    event = convert.forward_from_history(fwd)
    assert (event.amt_in_msat, event.amt_out_msat, event.fee_msat, event.timestamp_ns) == (
        10_001,
        9_000,
        1_001,
        77,
    )
    old = ln.ForwardingEvent(chan_id_in=1, chan_id_out=2, amt_in=10, amt_out=9, timestamp=5)
    event = convert.forward_from_history(old)
    assert (event.amt_in_msat, event.amt_out_msat, event.timestamp_ns) == (10_000, 9_000, 5_000_000_000)


def test_forward_settled_and_link_failure() -> None:
    key = (1, 2, 3, 4)
    settled = convert.forward_settled(key, 1000, 990, 55, 1.0)
    assert settled.dedupe_key() == "forward.settled:1:2:3:4" and settled.fee_msat == 10
    link_fail = router_pb2.LinkFailEvent(wire_failure=ln.Failure.TEMPORARY_CHANNEL_FAILURE)
    assert convert.link_failure(link_fail) == "TEMPORARY_CHANNEL_FAILURE"
    assert convert.link_failure(router_pb2.LinkFailEvent(failure_string="insufficient bandwidth")) == (
        "insufficient bandwidth"
    )
    failed = convert.forward_failed(key, 1000, 990, 55, "x", 1.0)
    assert isinstance(failed, ev.ForwardFailed) and failed.failure == "x"


def test_peer_and_backup_events() -> None:
    online = convert.peer_event(ln.PeerEvent(pub_key="02aa", type=ln.PeerEvent.PEER_ONLINE))
    offline = convert.peer_event(ln.PeerEvent(pub_key="02aa", type=ln.PeerEvent.PEER_OFFLINE))
    assert isinstance(online, ev.PeerOnline) and isinstance(offline, ev.PeerOffline)
    snapshot = ln.ChanBackupSnapshot(
        multi_chan_backup=ln.MultiChanBackup(
            chan_points=[ln.ChannelPoint(funding_txid_bytes=bytes.fromhex(TXID)[::-1], output_index=0)],
            multi_chan_backup=b"\x01\x02",
        )
    )
    backup = convert.backup_event(snapshot)
    assert (
        backup is not None and backup.multi_chan_backup == b"\x01\x02" and backup.chan_points == [f"{TXID}:0"]
    )
    assert convert.backup_event(ln.ChanBackupSnapshot()) is None


def test_index_floor_moves_only_through_contiguous_finished_payments() -> None:
    floor = IndexFloor()
    floor.reset(4, {6, 7})  # 5 still in flight
    assert floor.value == 4
    assert floor.finished(8) == 4
    assert floor.finished(5) == 8
    assert floor.finished(3) == 8


def test_recent_forwards_match_within_seconds_and_stay_bounded() -> None:
    recent = RecentForwards(size=3)
    for i in range(5):
        recent.add(1, 2, 1000, 990, i * 10_000_000_000)
    assert not recent.seen(1, 2, 1000, 990, 0)  # evicted
    assert recent.seen(1, 2, 1000, 990, 40_000_000_000 + 1_000_000_000)  # a second apart
    assert not recent.seen(1, 2, 1000, 991, 40_000_000_000)
    assert not recent.seen(1, 2, 1000, 990, 60_000_000_000)


@pytest.mark.parametrize("n", [20_000])
def test_conversion_speed_report(n: int) -> None:
    """Not a timed assertion: prints how many settle conversions per second."""
    inv = invoice(convert.SETTLED, settle_index=1, amt_paid_msat=1500)
    start = time.perf_counter()
    for _ in range(n):
        convert.invoice_state_event(inv, 1.0)
    rate = n / (time.perf_counter() - start)
    print(f"\nconvert: {rate:,.0f} settle events/s")
    assert rate > 0
