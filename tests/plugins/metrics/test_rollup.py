"""The hourly rollup behind windowed statistics gives exactly what reading every row
gives, for any activity and any window (hour-aligned or not, with or without buckets)."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import anyio
import lightningd_py.plugins.metrics as metrics_plugin
from hypothesis import given, settings
from hypothesis import strategies as st
from lightningd_py.plugins.metrics import analytics
from lightningd_py.plugins.metrics.ledger import Ledger, tx_row

from lightningd_py.events import (
    Event,
    ForwardFailed,
    ForwardSettled,
    InvoiceCanceled,
    InvoiceCreated,
    InvoiceSettled,
    PaymentFailed,
    PaymentSucceeded,
    RebalanceFailed,
    RebalanceSucceeded,
)
from lightningd_py.journal import MIGRATIONS as JOURNAL_MIGRATIONS
from lightningd_py.store import Store

T0 = 1_795_000_000.0  # on no particular hour
SPAN = 3 * 86400


@st.composite
def activity(draw: st.DrawFn) -> list[Event]:
    events: list[Event] = []
    for i in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["invoice", "payment", "forward", "rebalance"]))
        when = T0 + draw(st.floats(0, SPAN))
        amount = draw(st.integers(1, 10**9))
        h = f"{i:064x}"
        if kind == "invoice":
            events.append(
                InvoiceCreated(time=when, payment_hash=h, value_msat=amount, creation_date=int(when))
            )
            end = draw(st.sampled_from([None, InvoiceSettled, InvoiceCanceled]))
            if end is InvoiceSettled:
                later = when + draw(st.floats(0, 86400))
                events.append(
                    InvoiceSettled(time=later, payment_hash=h, amt_paid_msat=amount, settle_date=int(later))
                )
            elif end is InvoiceCanceled:
                events.append(InvoiceCanceled(time=when + draw(st.floats(0, 86400)), payment_hash=h))
        elif kind == "payment":
            cls = draw(st.sampled_from([PaymentSucceeded, PaymentFailed]))
            events.append(
                cls(time=when, payment_hash=h, payment_index=i, value_msat=amount, fee_msat=amount // 100)
            )
        elif kind == "rebalance":
            # Attempts of one rebalance, each with its own payment hash (or none yet).
            for attempt in range(draw(st.integers(1, 3))):
                cls = draw(st.sampled_from([RebalanceSucceeded, RebalanceFailed]))
                events.append(
                    cls(
                        time=when + attempt,
                        rebalance_id=f"r{i}",
                        outgoing_chan_id=1,
                        incoming_chan_id=2,
                        amount_msat=amount,
                        fee_msat=amount // 1000,
                        payment_hash=draw(st.sampled_from(["", f"{i:064x}", f"{i + 1000:064x}"])),
                    )
                )
        else:
            cls = draw(st.sampled_from([ForwardSettled, ForwardFailed]))
            events.append(
                cls(
                    time=when,
                    incoming_chan_id=1,
                    outgoing_chan_id=2,
                    incoming_htlc_id=i,
                    outgoing_htlc_id=i,
                    amt_in_msat=amount + 1000,
                    amt_out_msat=amount,
                    timestamp_ns=int(when * 1e9),
                )
            )
    return [
        type(e)(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "id": n + 1})
        for n, e in enumerate(events)
    ]


def by_rows(conn: sqlite3.Connection, start: float, end: float, step: float | None) -> dict:
    """The oracle: every row of the window, no rollup."""
    bucket = f"CAST((time - {start!r}) / {step!r} AS INTEGER), " if step else ""
    out = {}
    for row in conn.execute(
        f"SELECT {bucket}kind, status, COUNT(*), SUM(amount_msat), SUM(fee_msat) FROM metrics_tx "
        f"WHERE time >= ? AND time < ? GROUP BY {bucket}kind, status",
        (start, end),
    ):
        *key, count, amount, fee = tuple(row)
        out[tuple(key)] = (count, amount, fee)
    return out


# Hypothesis calls the tests below without function fixtures: their databases go in one
# directory, removed when the test session ends.
_WORK = tempfile.TemporaryDirectory(prefix="ldp-rollup-")


def recorded(events: list[Event], runs: list[int] | None = None) -> Path:
    """A database with ``events`` recorded one by one, or as runs of the given sizes
    (each run recorded twice, as a redelivery after a crash would)."""
    path = Path(tempfile.mkdtemp(dir=_WORK.name)) / "db.sqlite3"

    async def run() -> None:
        store = Store(path)
        store.open()
        store.migrate("journal", JOURNAL_MIGRATIONS)
        store.migrate("metrics", metrics_plugin.ldp_migrations())
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            ledger = Ledger(store.handle("metrics"))
            if runs is None:
                for event in events:
                    await ledger.record(event)
            else:
                at = 0
                for size in runs:
                    await ledger.record_run(events[at : at + size])
                    await ledger.record_run(events[at : at + size])
                    at += size
                await ledger.record_run(events[at:])
            await store.flush()
            tg.cancel_scope.cancel()
        await store.close()

    asyncio.run(run())
    return path


@settings(max_examples=80, deadline=None)
@given(
    events=activity(),
    start=st.floats(-3600, SPAN),
    length=st.floats(1, SPAN),
    aligned=st.booleans(),
    step=st.sampled_from([None, 3600.0, 86400.0]),
)
def test_rollup_equals_reading_every_row(events, start, length, aligned, step) -> None:
    start = T0 + start
    if aligned:
        start -= start % 3600
    end = start + length
    conn = sqlite3.connect(recorded(events))
    try:
        got = {
            k: (f.count, f.amount_msat, f.fee_msat)
            for k, f in analytics.grouped(conn, start, end, step).items()
        }
        assert {k: v for k, v in got.items() if v[0]} == by_rows(conn, start, end, step)
        whole = analytics.grouped(conn, T0 - 3600, T0 + 2 * SPAN)
        assert (
            sum(f.count for f in whole.values())
            == conn.execute("SELECT COUNT(*) FROM metrics_tx").fetchone()[0]
        )
    finally:
        conn.close()


def tables(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return {
            "tx": conn.execute(
                "SELECT kind, key, status, rank, time, created, amount_msat, fee_msat, chan_in, "
                "chan_out, payment_hash, description, event_id FROM metrics_tx ORDER BY kind, key"
            ).fetchall(),
            "hourly": conn.execute(
                "SELECT * FROM metrics_tx_hourly WHERE count != 0 ORDER BY hour, kind, status"
            ).fetchall(),
            "totals": conn.execute("SELECT * FROM metrics_totals ORDER BY name").fetchall(),
        }
    finally:
        conn.close()


# What the ledger wrote before it merged runs: one upsert per event, the hourly sums kept
# by triggers. Runs must leave exactly the tables these statements leave.
_ORACLE_UPSERT = """
INSERT INTO metrics_tx (kind, key, status, rank, time, created, amount_msat, fee_msat,
                        chan_in, chan_out, payment_hash, description, event_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (kind, key) DO UPDATE SET
    status = excluded.status, rank = excluded.rank, time = excluded.time,
    amount_msat = excluded.amount_msat, fee_msat = excluded.fee_msat,
    chan_in = excluded.chan_in, chan_out = excluded.chan_out,
    payment_hash = excluded.payment_hash, event_id = excluded.event_id,
    description = CASE WHEN excluded.description != '' THEN excluded.description ELSE description END
WHERE excluded.rank > metrics_tx.rank
   OR (excluded.rank = metrics_tx.rank AND excluded.event_id > metrics_tx.event_id)
"""


def oracle(events: list[Event]) -> Path:
    path = Path(tempfile.mkdtemp(dir=_WORK.name)) / "oracle.sqlite3"
    conn = sqlite3.connect(path)
    try:
        for migration in metrics_plugin.ldp_migrations()[:2]:
            conn.executescript(migration.sql)
        for event in events:
            row = tx_row(event)
            if row is not None:
                conn.execute(_ORACLE_UPSERT, row)
        conn.commit()
    finally:
        conn.close()
    return path


@settings(max_examples=60, deadline=None)
@given(events=activity(), runs=st.lists(st.integers(1, 8), max_size=8))
def test_runs_write_what_one_upsert_per_event_wrote(events, runs) -> None:
    got, want = tables(recorded(events, runs)), tables(oracle(events))
    assert got["tx"] == want["tx"]
    assert got["hourly"] == want["hourly"]
    assert got["totals"] == tables(recorded(events))["totals"]
