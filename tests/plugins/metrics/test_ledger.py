"""The plugin's record of activity: idempotent under redelivery, durable totals, and
every windowed statistic over a scripted day whose figures are known."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import anyio
import lightningd_py.plugins.metrics as metrics_plugin
import pytest
from lightningd_py.plugins.metrics import analytics
from lightningd_py.plugins.metrics.ledger import Ledger, tx_row
from lightningd_py.plugins.metrics.snapshot import ChannelState, NodeSnapshot

from lightningd_py.events import (
    REBALANCE_MEMO_PREFIX,
    Event,
    ForwardFailed,
    ForwardSettled,
    InvoiceCreated,
    InvoiceExpired,
    InvoiceSettled,
    PaymentFailed,
    PaymentSucceeded,
    RebalanceFailed,
    RebalanceSucceeded,
    encode_event,
)
from lightningd_py.journal import MIGRATIONS as JOURNAL_MIGRATIONS
from lightningd_py.store import Store

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp()
DAY = 86400.0
CHAN_A, CHAN_B, CHAN_C = (
    (800_000 << 40) | (1 << 16),
    (800_001 << 40) | (2 << 16) | 1,
    (800_002 << 40) | (3 << 16),
)


def scripted_day() -> list[Event]:
    """One day of activity (ids as the journal would assign them)."""
    return [
        InvoiceCreated(
            id=1,
            time=T0,
            payment_hash="h1",
            value_msat=100_000,
            creation_date=int(T0),
            memo="coffee",
            add_index=1,
        ),
        InvoiceCreated(
            id=2, time=T0 + 10, payment_hash="h2", value_msat=250_000, creation_date=int(T0 + 10), add_index=2
        ),
        InvoiceSettled(
            id=3,
            time=T0 + 60,
            payment_hash="h1",
            add_index=1,
            value_msat=100_000,
            amt_paid_msat=100_000,
            creation_date=int(T0),
            settle_date=int(T0 + 60),
        ),
        InvoiceCreated(
            id=4, time=T0 + 20, payment_hash="h3", value_msat=5_000, creation_date=int(T0 + 20), add_index=3
        ),
        InvoiceExpired(
            id=5, time=T0 + 3600, payment_hash="h3", value_msat=5_000, creation_date=int(T0 + 20), add_index=3
        ),
        PaymentSucceeded(
            id=6, time=T0 + 100, payment_hash="p1", payment_index=1, value_msat=1_000_000, fee_msat=1_000
        ),
        PaymentFailed(
            id=7,
            time=T0 + 200,
            payment_hash="p2",
            payment_index=2,
            value_msat=50_000,
            failure_reason="FAILURE_REASON_NO_ROUTE",
        ),
        PaymentSucceeded(
            id=8, time=T0 + 300, payment_hash="p3", payment_index=3, value_msat=500_000, fee_msat=200
        ),
        RebalanceSucceeded(
            id=9,
            time=T0 + 301,
            rebalance_id="r1",
            outgoing_chan_id=CHAN_A,
            incoming_chan_id=CHAN_B,
            amount_msat=500_000,
            fee_msat=200,
            payment_hash="p3",
        ),
        RebalanceFailed(
            id=10,
            time=T0 + 500,
            rebalance_id="r2",
            outgoing_chan_id=CHAN_A,
            incoming_chan_id=CHAN_C,
            amount_msat=300_000,
            failure_reason="no route",
        ),
        ForwardSettled(
            id=11,
            time=T0 + 400,
            incoming_chan_id=CHAN_A,
            outgoing_chan_id=CHAN_B,
            incoming_htlc_id=1,
            outgoing_htlc_id=7,
            amt_in_msat=2_001_000,
            amt_out_msat=2_000_000,
            timestamp_ns=int((T0 + 400) * 1e9),
        ),
        ForwardSettled(
            id=12,
            time=T0 + 410,
            incoming_chan_id=CHAN_B,
            outgoing_chan_id=CHAN_C,
            incoming_htlc_id=2,
            outgoing_htlc_id=8,
            amt_in_msat=700_500,
            amt_out_msat=700_000,
            timestamp_ns=int((T0 + 410) * 1e9),
        ),
        ForwardFailed(
            id=13,
            time=T0 + 420,
            incoming_chan_id=CHAN_A,
            outgoing_chan_id=CHAN_C,
            incoming_htlc_id=3,
            outgoing_htlc_id=9,
            amt_in_msat=10_000,
            amt_out_msat=9_900,
            timestamp_ns=int((T0 + 420) * 1e9),
        ),
        # The rebalance paid an invoice of this node: both sides are the rebalance's.
        InvoiceCreated(
            id=14,
            time=T0 + 299,
            payment_hash="p3",
            value_msat=500_000,
            creation_date=int(T0 + 299),
            memo=f"{REBALANCE_MEMO_PREFIX}r1",
            add_index=4,
        ),
        InvoiceSettled(
            id=15,
            time=T0 + 300,
            payment_hash="p3",
            memo=f"{REBALANCE_MEMO_PREFIX}r1",
            add_index=4,
            value_msat=500_000,
            amt_paid_msat=500_000,
            creation_date=int(T0 + 299),
            settle_date=int(T0 + 300),
        ),
    ]


def channel(chan_id: int, local: int, remote: int, active: bool) -> ChannelState:
    return ChannelState(
        chan_id=chan_id,
        channel_point=f"{chan_id:064x}:0",
        peer_pubkey="02" + "11" * 32,
        peer_alias="bob",
        capacity_sat=local + remote + 10_000,
        local_balance_sat=local,
        remote_balance_sat=remote,
        active=active,
        private=False,
        pending_htlcs=0,
    )


async def test_totals_count_each_event_once_and_survive_a_restart(metrics_store) -> None:
    async with metrics_store() as store:
        ledger = Ledger(store)
        await ledger.load()
        events = scripted_day()
        for event in events:
            await ledger.record(event)
        # At-least-once delivery: a crash replays the events after the durable cursor.
        for event in events[4:9]:
            await ledger.record(event)
        await store.flush()
        expected = {
            "invoice.created": (4, 855_000, 0),
            "invoice.settled": (2, 600_000, 0),
            "invoice.expired": (1, 5_000, 0),
            "payment.succeeded": (2, 1_500_000, 1_200),
            "payment.failed": (1, 50_000, 0),
            "rebalance.succeeded": (1, 500_000, 200),
            "rebalance.failed": (1, 300_000, 0),
            "forward.settled": (2, 2_700_000, 1_500),
            "forward.failed": (1, 9_900, 0),
        }
        got = {k: (t.count, t.amount_msat, t.fee_msat) for k, t in ledger.totals.items()}
        assert got == expected
        # A new process reads the same totals from the database, and a replay there
        # still counts nothing twice.
        restarted = Ledger(store)
        await restarted.load()
        for event in events[-3:]:
            await restarted.record(event)
        await store.flush()
        assert {k: (t.count, t.amount_msat, t.fee_msat) for k, t in restarted.totals.items()} == expected
        rows = await store.fetchall("SELECT name, count, amount_msat, fee_msat FROM metrics_totals")
        assert {r["name"]: (r["count"], r["amount_msat"], r["fee_msat"]) for r in rows} == expected


async def test_a_late_replay_never_downgrades_an_invoice(metrics_store) -> None:
    async with metrics_store() as store:
        ledger = Ledger(store)
        for event in scripted_day()[:3]:
            await ledger.record(event)
        # The created event observed again (e.g. by a ListInvoices catch-up) after settlement.
        await ledger.record(
            InvoiceCreated(id=40, time=T0 + 900, payment_hash="h1", value_msat=100_000, add_index=1)
        )
        await store.flush()
        row = await store.fetchone(
            "SELECT status, amount_msat, time, description FROM metrics_tx WHERE payment_hash = 'h1'"
        )
        assert (row["status"], row["amount_msat"], row["time"], row["description"]) == (
            "settled",
            100_000,
            T0 + 60,
            "coffee",
        )


async def test_window_statistics_match_the_scripted_day(metrics_store) -> None:
    async with metrics_store() as store:
        ledger = Ledger(store)
        for event in scripted_day():
            await ledger.record(event)
        await store.flush()
        act = await store.read(lambda c: analytics.activity(c, T0, T0 + DAY))
        outside = await store.read(lambda c: analytics.activity(c, T0 + DAY, T0 + 2 * DAY))
    assert outside.by == {} and outside.invoices_created == 0
    # The rebalance's own payment and invoice (p3) count as the rebalance, not as a
    # payment and a received invoice.
    assert act.payments() == {
        "succeeded": 1,
        "failed": 1,
        "success_rate": 0.5,
        "sent_msat": 1_000_000,
        "sent_sat": 1000.0,
        "fees_msat": 1_000,
        "fees_sat": 1.0,
        "fee_ppm": 1000.0,
        "average_sat": 1000.0,
    }
    assert act.invoices() == {
        "created": 3,
        "settled": 1,
        "received_msat": 100_000,
        "received_sat": 100.0,
        "canceled": 0,
        "expired": 1,
        "average_sat": 100.0,
    }
    assert act.forwards() == {
        "settled": 2,
        "failed": 1,
        "success_rate": round(2 / 3, 6),
        "volume_msat": 2_700_000,
        "volume_sat": 2700.0,
        "fees_earned_msat": 1_500,
        "fees_earned_sat": 1.5,
    }
    assert act.rebalances() == {
        "succeeded": 1,
        "failed": 1,
        "dry_run": 0,
        "moved_msat": 500_000,
        "moved_sat": 500.0,
        "fees_msat": 200,
        "fees_sat": 0.2,
    }
    assert act.fees() == {
        "earned_msat": 1_500,
        "earned_sat": 1.5,
        "paid_msat": 1_000,
        "paid_sat": 1.0,
        "rebalance_msat": 200,
        "rebalance_sat": 0.2,
        "net_msat": 300,
        "net_sat": 0.3,
    }


async def test_channel_performance_and_balance_series(metrics_store) -> None:
    async with metrics_store() as store:
        ledger = Ledger(store)
        for event in scripted_day():
            await ledger.record(event)
        await ledger.sample(NodeSnapshot(taken_at=T0, channels=(channel(CHAN_A, 300_000, 700_000, True),)))
        await ledger.sample(
            NodeSnapshot(taken_at=T0 + 900, channels=(channel(CHAN_A, 500_000, 500_000, False),))
        )
        await ledger.sample(NodeSnapshot(taken_at=T0 + 2 * DAY, channels=(channel(CHAN_A, 0, 1, True),)))
        await store.flush()
        perf = await store.read(lambda c: analytics.channel_performance(c, T0, T0 + DAY))
        series = await store.read(lambda c: analytics.channel_series(c, CHAN_A, T0, T0 + DAY, 100))
        one_point = await store.read(lambda c: analytics.channel_series(c, CHAN_A, T0, T0 + DAY, 1))
        identity = await store.read(lambda c: analytics.known_channel(c, CHAN_A))
        unknown = await store.read(lambda c: analytics.known_channel(c, 12345))
    a, b, c = perf[CHAN_A], perf[CHAN_B], perf[CHAN_C]
    assert (a["forwards_in"], a["volume_in_msat"], a["forwards_out"]) == (1, 2_001_000, 0)
    assert (a["rebalanced_out_msat"], a["rebalance_fees_msat"]) == (500_000, 200)
    assert (a["samples"], a["uptime"]) == (2, 0.5)
    assert (a["balance_ratio_min"], a["balance_ratio_avg"], a["balance_ratio_max"]) == (0.3, 0.4, 0.5)
    assert (b["forwards_out"], b["volume_out_msat"], b["fees_earned_msat"]) == (1, 2_000_000, 1_000)
    assert (b["forwards_in"], b["volume_in_msat"], b["rebalanced_in_msat"]) == (1, 700_500, 500_000)
    assert (c["forwards_out"], c["fees_earned_msat"], c["forwards_failed_out"]) == (1, 500, 1)
    assert [(p["time"], p["local_sat"], p["balance_ratio"], p["uptime"]) for p in series] == [
        (T0, 300_000, 0.3, 1.0),
        (T0 + 900, 500_000, 0.5, 0.0),
    ]
    assert [(p["local_sat"], p["balance_ratio"], p["uptime"], p["samples"]) for p in one_point] == [
        (400_000, 0.4, 0.5, 2)
    ]
    assert identity is not None and identity["peer_alias"] == "bob" and identity["capacity_sat"] == 10_001
    assert unknown is None


async def test_history_pages_cover_everything_once_in_order(metrics_store) -> None:
    async with metrics_store() as store:
        ledger = Ledger(store)
        for event in scripted_day():
            await ledger.record(event)
        await store.flush()
        seen: list[dict] = []
        after = None
        while True:
            page = await store.read(
                lambda c, after=after: analytics.history_page(
                    c,
                    start=float("-inf"),
                    end=float("inf"),
                    kinds=(),
                    statuses=(),
                    chan_id=None,
                    after=after,
                    limit=4,
                )
            )
            seen.extend(page)
            if len(page) < 4:
                break
            after = (page[-1]["time"], page[-1]["kind"], page[-1]["id"])
        forwards_c = await store.read(
            lambda c: analytics.history_page(
                c,
                start=T0,
                end=T0 + DAY,
                kinds=("forward",),
                statuses=("settled",),
                chan_id=CHAN_C,
                after=None,
                limit=10,
            )
        )
    assert len(seen) == 12
    assert [r["time"] for r in seen] == sorted((r["time"] for r in seen), reverse=True)
    assert {(r["kind"], r["status"]) for r in seen} >= {
        ("invoice", "settled"),
        ("invoice", "open"),
        ("rebalance", "failed"),
    }
    assert [(r["amount_msat"], r["fee_msat"]) for r in forwards_c] == [(700_000, 500)]


async def test_breakdown_buckets_the_day_by_hour(metrics_store) -> None:
    async with metrics_store() as store:
        ledger = Ledger(store)
        for event in scripted_day():
            await ledger.record(event)
        await store.flush()
        day_start = T0 - 12 * 3600
        buckets = await store.read(lambda c: analytics.breakdown(c, day_start, day_start + DAY, 3600))
    assert len(buckets) == 24
    noon = buckets[12]
    assert (noon["invoices_settled"], noon["received_msat"]) == (1, 100_000)
    assert (noon["payments_succeeded"], noon["payments_failed"], noon["sent_msat"]) == (1, 1, 1_000_000)
    assert (noon["forwards_settled"], noon["fees_earned_msat"], noon["net_fees_msat"]) == (2, 1_500, 300)
    assert sum(b["forwards_settled"] for b in buckets) == 2


async def test_rows_written_before_ids_keep_their_state_and_take_ids_in_event_order(tmp_path) -> None:
    # A database as the plugin left it before its rows had ids (schema version 4), when an
    # invoice's key was its payment hash, beside the daemon's journal of the same events.
    path = tmp_path / "ldp.sqlite3"
    store = Store(path)
    store.open()
    store.migrate("journal", JOURNAL_MIGRATIONS)
    store.migrate("metrics", metrics_plugin.ldp_migrations()[:4])
    day = scripted_day()
    rows = [row for row in (tx_row(event) for event in day) if row is not None]
    latest = {(row.kind, row.key): row for row in sorted(rows, key=lambda row: (row.rank, row.event_id))}
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO journal (id, type, time, body) VALUES (?, ?, ?, ?)",
        [(event.id, event.type, event.time, encode_event(event)) for event in day],
    )
    conn.executemany(
        "INSERT INTO metrics_tx VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [row._replace(key=row.payment_hash) if row.kind == "invoice" else row for row in latest.values()],
    )
    conn.commit()
    conn.close()
    assert store.migrate("metrics", metrics_plugin.ldp_migrations()) == [5, 6]

    handle = store.handle("metrics")
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        stored = await handle.fetchall("SELECT id, kind, key, status, event_id FROM metrics_tx ORDER BY id")
        assert [r["event_id"] for r in stored] == sorted(row.event_id for row in latest.values())
        # Invoices are keyed by add index now, as the ledger keys them from here on.
        assert {(r["kind"], r["key"], r["status"]) for r in stored} == {
            (row.kind, row.key, row.status) for row in latest.values()
        }
        # The ledger goes on from there: a replayed day changes nothing, a new state
        # updates its row in place, a new transaction takes the next id.
        ledger = Ledger(handle)
        await ledger.record_run(day)
        await ledger.record(
            InvoiceCreated(
                id=100,
                time=T0 + 7200,
                payment_hash="h9",
                value_msat=1,
                creation_date=int(T0 + 7200),
                add_index=5,
            )
        )
        await ledger.record(
            InvoiceSettled(
                id=101,
                time=T0 + 7300,
                payment_hash="h2",
                value_msat=250_000,
                amt_paid_msat=250_000,
                creation_date=int(T0 + 10),
                settle_date=int(T0 + 7300),
                add_index=2,
            )
        )
        await handle.flush()
        after = await handle.fetchall("SELECT id, kind, key, status FROM metrics_tx ORDER BY id")
        h2 = latest[("invoice", "000000000002")]
        assert [tuple(r) for r in after[: len(stored)]] == [
            (r["id"], r["kind"], r["key"], "settled" if r["key"] == h2.key else r["status"]) for r in stored
        ]
        assert tuple(after[-1]) == (stored[-1]["id"] + 1, "invoice", "000000000005", "open")
        indexes = await handle.fetchall("SELECT name FROM sqlite_master WHERE tbl_name = 'metrics_tx'")
        assert {r[0] for r in indexes} >= {
            "metrics_tx_time",
            "metrics_tx_kind_time",
            "metrics_tx_kind_created",
            "metrics_tx_hash",
        }
        tg.cancel_scope.cancel()
    await store.close()


async def test_the_rebalances_own_rows_are_found_through_the_hash_index(metrics_store) -> None:
    # Invoices are keyed by add index: a rebalance's own invoice is found by its hash in
    # the hash index, which holds the rebalancer's invoices (by their memo) and no others.
    async with metrics_store() as store:
        plan = await store.fetchall(f"EXPLAIN QUERY PLAN SELECT COUNT(*) FROM {analytics._REBALANCE_OWN}")
        details = [r["detail"] for r in plan]
        assert any("metrics_tx_hash" in d for d in details), details
        assert not any(d.startswith("SCAN t") for d in details), details
