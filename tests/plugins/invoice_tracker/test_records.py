"""The tracker's tables on a real sqlite store: event upserts, creation records in
either order, history, redelivery, listing and cursors."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from lightningd_py.plugins.invoice_tracker import records

from lightningd_py.events import (
    InvoiceAccepted,
    InvoiceCanceled,
    InvoiceCreated,
    InvoiceExpired,
    InvoiceSettled,
)
from lightningd_py.store import Store, StoreHandle

pytestmark = pytest.mark.anyio

H1 = "11" * 32
H2 = "22" * 32


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StoreHandle]:
    backend = Store(tmp_path / "db.sqlite")
    backend.open()
    backend.migrate("invoice_tracker", records.migrations())
    async with anyio.create_task_group() as tg:
        await tg.start(backend.run)
        yield backend.handle("invoice_tracker")
        tg.cancel_scope.cancel()
    await backend.close()


def created(h: str = H1, event_id: int = 1, **kw: object) -> InvoiceCreated:
    now = int(time.time())
    fields = dict(
        id=event_id,
        payment_hash=h,
        payment_request="lnbcrt1fake",
        memo="coffee",
        value_msat=5000,
        creation_date=now,
        expiry=3600,
        add_index=event_id,
    )
    fields.update(kw)
    return InvoiceCreated(**fields)  # type: ignore[arg-type]


async def every_page(store: StoreHandle, limit: int) -> list[str]:
    """The payment hashes of the invoice list, read page by page with its cursor."""
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await records.list_invoices(store, limit=limit, cursor=cursor)
        seen += [i["payment_hash"] for i in page]
        if cursor is None:
            return seen


async def apply(store: StoreHandle, *events: object) -> None:
    for event in events:
        await records.apply_events(store, [event])  # type: ignore[list-item]
    await store.flush()


async def test_event_then_creation_keeps_both(store: StoreHandle) -> None:
    await apply(store, created())
    await records.record_creation(
        store,
        records.CreatedInvoice(
            payment_hash=H1,
            payment_request="lnbcrt1fake",
            memo="coffee",
            value_msat=5000,
            created_at=1,
            expires_at=2,
            fiat_currency="EUR",
            fiat_amount="2.50",
            exchange_rate="50000",
            metadata={"order": "A-1"},
        ),
    )
    inv = await records.get_invoice(store, H1)
    assert inv is not None
    assert inv["status"] == "pending"
    assert inv["expires_at"] > time.time()  # LND's times kept, not the creator's
    assert inv["fiat"] == {"currency": "EUR", "amount": "2.50", "exchange_rate": "50000"}
    assert inv["metadata"] == {"order": "A-1"}


async def test_creation_then_events(store: StoreHandle) -> None:
    now = int(time.time())
    await records.record_creation(
        store,
        records.CreatedInvoice(
            payment_hash=H1,
            payment_request="lnbcrt1fake",
            memo="coffee",
            value_msat=5000,
            created_at=now,
            expires_at=now + 3600,
            metadata={"customer": "c-9"},
        ),
    )
    await apply(
        store,
        created(),
        InvoiceSettled(
            id=2, payment_hash=H1, amt_paid_msat=5000, settle_date=now, settle_index=1, preimage="ab" * 32
        ),
    )
    inv = await records.get_invoice(store, H1)
    assert inv is not None
    assert inv["status"] == "paid"
    assert inv["amount_paid_msat"] == 5000
    assert inv["preimage"] == "ab" * 32
    assert inv["metadata"] == {"customer": "c-9"}
    assert inv["memo"] == "coffee"  # the settled event's empty memo does not erase it
    assert [h["status"] for h in await records.invoice_history(store, H1)] == ["pending", "paid"]


async def test_redelivery_and_late_events_change_nothing(store: StoreHandle) -> None:
    settled = InvoiceSettled(id=2, payment_hash=H1, amt_paid_msat=5000, settle_date=10)
    await apply(store, created(), settled)
    await apply(store, created(), settled, InvoiceExpired(id=3, payment_hash=H1))
    inv = await records.get_invoice(store, H1)
    assert inv is not None and inv["status"] == "paid"
    history = await records.invoice_history(store, H1)
    assert [(h["event_id"], h["status"]) for h in history] == [(1, "pending"), (2, "paid"), (3, "expired")]


async def test_hold_invoice_and_cancel(store: StoreHandle) -> None:
    await apply(store, created(), InvoiceAccepted(id=2, payment_hash=H1, amt_paid_msat=5000))
    assert (await records.get_invoice(store, H1))["status"] == "accepted"  # type: ignore[index]
    await apply(store, InvoiceCanceled(id=3, payment_hash=H1))
    assert (await records.get_invoice(store, H1))["status"] == "canceled"  # type: ignore[index]


async def test_unpaid_past_expiry_reads_as_expired(store: StoreHandle) -> None:
    await apply(store, created(creation_date=int(time.time()) - 100, expiry=60))
    assert (await records.get_invoice(store, H1))["status"] == "expired"  # type: ignore[index]
    page, _ = await records.list_invoices(store, status="expired")
    assert [i["payment_hash"] for i in page] == [H1]
    page, _ = await records.list_invoices(store, status="pending")
    assert page == []


async def test_list_pages_with_cursor_and_filters(store: StoreHandle) -> None:
    base = int(time.time())
    hashes = [f"{i:064x}" for i in range(7)]
    await apply(store, *[created(h, i + 1, creation_date=base + i) for i, h in enumerate(hashes)])
    await apply(store, InvoiceSettled(id=100, payment_hash=hashes[3], amt_paid_msat=1))
    assert await every_page(store, limit=3) == hashes[::-1]
    paid, _ = await records.list_invoices(store, status="paid")
    assert [i["payment_hash"] for i in paid] == [hashes[3]]
    window, _ = await records.list_invoices(store, created_after=base + 2, created_before=base + 4)
    assert [i["payment_hash"] for i in window] == [hashes[3], hashes[2]]
    with pytest.raises(ValueError):
        await records.list_invoices(store, cursor="not-a-cursor")
    assert await records.get_invoice(store, H2) is None


async def test_batched_lookups_answer_each_caller(store: StoreHandle) -> None:
    hashes = [f"{i:064x}" for i in range(40)]
    await apply(store, *[created(h, i + 1) for i, h in enumerate(hashes)])
    lookups = records.InvoiceLookups(store)
    wanted = [*hashes, H2, hashes[3], hashes[3]]
    results = await asyncio.gather(*(lookups.get(h) for h in wanted))
    assert [r["payment_hash"] if r else None for r in results] == [*hashes, None, hashes[3], hashes[3]]
    assert await lookups.get(hashes[0]) == await records.get_invoice(store, hashes[0])


async def test_batched_lookup_survives_a_cancelled_leader(store: StoreHandle) -> None:
    await apply(store, created())
    lookups = records.InvoiceLookups(store)
    async with anyio.create_task_group() as tg:
        got: list[object] = []

        async def follower() -> None:
            got.append(await lookups.get(H1))

        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await lookups.get(H1)

        tg.start_soon(leader)
        tg.start_soon(follower)
        await anyio.lowlevel.checkpoint()
        leader_scope.cancel()
    assert got and got[0]["payment_hash"] == H1  # type: ignore[index]


async def test_a_run_leaves_what_its_events_one_by_one_leave(tmp_path: Path) -> None:
    """A run's events of one invoice are merged into one upsert; the tables end as if
    each event had been applied on its own, in order, whatever the order and the fields."""
    import random

    rng = random.Random(7)
    kinds = [created, InvoiceAccepted, InvoiceSettled, InvoiceCanceled, InvoiceExpired]
    events = []
    for event_id in range(1, 400):
        kind = rng.choice(kinds)
        h = rng.choice([H1, H2, "33" * 32])
        extra = rng.choice(
            [{}, {"memo": ""}, {"memo": f"m{event_id}"}, {"value_msat": 0}, {"payment_request": ""}]
        )
        if kind is created:
            events.append(created(h, event_id, **extra))
            continue
        fields: dict[str, object] = {"id": event_id, "payment_hash": h, **extra}
        if kind is InvoiceSettled:
            fields.update(amt_paid_msat=rng.choice([0, 4000, 5000]), settle_date=rng.randint(1, 50))
            fields.update(settle_index=rng.randint(1, 50), preimage=rng.choice(["", "ab" * 32]))
        fields.update(is_keysend=rng.random() < 0.5, private=rng.random() < 0.5)
        events.append(kind(**fields))

    async def tables(runs: list[list[object]], name: str) -> list[list[tuple[object, ...]]]:
        backend = Store(tmp_path / f"{name}.sqlite")
        backend.open()
        backend.migrate("invoice_tracker", records.migrations())
        async with anyio.create_task_group() as tg:
            await tg.start(backend.run)
            handle = backend.handle("invoice_tracker")
            for run in runs:
                await records.apply_events(handle, run)  # type: ignore[arg-type]
            await handle.flush()
            out = [
                [tuple(r) for r in await handle.fetchall(sql)]
                for sql in (
                    "SELECT * FROM invoice_tracker_invoices ORDER BY payment_hash",
                    "SELECT i.payment_hash, h.* FROM invoice_tracker_history AS h "
                    "JOIN invoice_tracker_invoices AS i ON i.id = h.invoice_id ORDER BY 1, h.event_id",
                )
            ]
            tg.cancel_scope.cancel()
        await backend.close()
        # updated_at is the time of the write.
        out[0] = [row[:-1] for row in out[0]]
        return out

    one_by_one = await tables([[e] for e in events], "single")
    cuts = sorted(rng.sample(range(1, len(events)), 12))
    runs = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    assert await tables(runs, "runs") == one_by_one
    assert await tables([events], "whole") == one_by_one


async def test_invoices_recorded_before_ids_keep_their_rows_and_history(tmp_path: Path) -> None:
    # A database as the tracker left it when rows and history were keyed by payment hash.
    path = tmp_path / "db.sqlite"
    backend = Store(path)
    backend.open()
    backend.migrate("invoice_tracker", records.migrations()[:1])
    base = int(time.time())
    hashes = [f"{i:064x}" for i in (5, 3, 9, 1)]  # not in hash order
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO invoice_tracker_invoices (payment_hash, memo, value_msat, status, created_at) "
        "VALUES (?, ?, 1000, 'pending', ?)",
        [(h, f"memo {i}", base) for i, h in enumerate(hashes)],
    )
    conn.executemany(
        "INSERT INTO invoice_tracker_history (payment_hash, event_id, status, time) "
        "VALUES (?, ?, 'pending', ?)",
        [(h, i + 1, base) for i, h in enumerate(hashes)],
    )
    conn.commit()
    conn.close()
    assert backend.migrate("invoice_tracker", records.migrations()) == [2]

    async with anyio.create_task_group() as tg:
        await tg.start(backend.run)
        store = backend.handle("invoice_tracker")
        rows = await store.fetchall("SELECT id, payment_hash, memo FROM invoice_tracker_invoices ORDER BY id")
        assert [tuple(r) for r in rows] == [(i + 1, h, f"memo {i}") for i, h in enumerate(hashes)]
        assert [e["event_id"] for e in await records.invoice_history(store, hashes[2])] == [3]
        # The tracker goes on from there; a new invoice of the same second comes first.
        await apply(
            store,
            created("ff" * 32, 10, creation_date=base),
            InvoiceSettled(id=11, payment_hash=hashes[1], amt_paid_msat=1000),
        )
        assert [e["status"] for e in await records.invoice_history(store, hashes[1])] == ["pending", "paid"]
        assert await every_page(store, limit=2) == ["ff" * 32, *hashes[::-1]]
        tg.cancel_scope.cancel()
    await backend.close()
