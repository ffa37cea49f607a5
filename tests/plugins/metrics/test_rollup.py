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
from lightningd_py.plugins.metrics.ledger import Ledger

from lightningd_py.events import (
    Event,
    ForwardFailed,
    ForwardSettled,
    InvoiceCanceled,
    InvoiceCreated,
    InvoiceSettled,
    PaymentFailed,
    PaymentSucceeded,
)
from lightningd_py.store import Store

T0 = 1_795_000_000.0  # on no particular hour
SPAN = 3 * 86400


@st.composite
def activity(draw: st.DrawFn) -> list[Event]:
    events: list[Event] = []
    for i in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["invoice", "payment", "forward"]))
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


def recorded(events: list[Event]) -> Path:
    path = Path(tempfile.mkdtemp()) / "db.sqlite3"

    async def run() -> None:
        store = Store(path)
        store.open()
        store.migrate("metrics", metrics_plugin.ldp_migrations())
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            ledger = Ledger(store.handle("metrics"))
            for event in events:
                await ledger.record(event)
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
