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
    # LND's add index is an invoice's for good; an event may also come without one.
    add_indexes = {H1: 1, H2: 2, "33" * 32: 3}
    for event_id in range(1, 400):
        kind = rng.choice(kinds)
        h = rng.choice(list(add_indexes))
        extra = rng.choice(
            [{}, {"memo": ""}, {"memo": f"m{event_id}"}, {"value_msat": 0}, {"payment_request": ""}]
        )
        if kind is created:
            events.append(created(h, event_id, add_index=add_indexes[h], **extra))
            continue
        fields: dict[str, object] = {"id": event_id, "payment_hash": h, **extra}
        fields["add_index"] = rng.choice([0, add_indexes[h]])
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
    assert backend.migrate("invoice_tracker", records.migrations()) == [2, 3]

    async with anyio.create_task_group() as tg:
        await tg.start(backend.run)
        store = backend.handle("invoice_tracker")
        rows = await store.fetchall(
            "SELECT id, payment_hash, hash_key, memo FROM invoice_tracker_invoices ORDER BY id"
        )
        assert [tuple(r) for r in rows] == [
            (i + 1, h, records.hash_key(h), f"memo {i}") for i, h in enumerate(hashes)
        ]
        assert (await records.get_invoice(store, hashes[3]))["memo"] == "memo 3"  # type: ignore[index]
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


async def test_the_hash_has_no_unique_index_and_every_lookup_goes_through_its_key(
    store: StoreHandle,
) -> None:
    await apply(store, created(H1, 1), created(H2, 2))
    await records.record_creation(
        store,
        records.CreatedInvoice(
            payment_hash=H2,
            payment_request="lnbcrt1fake",
            memo="tea",
            value_msat=1,
            created_at=1,
            expires_at=2,
            add_index=2,
            metadata={"order": 7},
        ),
    )

    def plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[str]:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]

    async def searches(sql: str, params: tuple[object, ...]) -> list[str]:
        steps = await store.read(lambda conn: plan(conn, sql, params))
        return [step for step in steps if step.startswith(("SEARCH", "SCAN"))]

    by_key = [
        "SEARCH invoice_tracker_invoices USING INTEGER PRIMARY KEY (rowid=?)",
        "SEARCH invoice_tracker_hashes USING PRIMARY KEY (hash_key=?)",
        "SEARCH invoice_tracker_new_hashes USING PRIMARY KEY (hash_key=?)",
    ]
    assert await searches(records._SELECT_ONE, (None, H1, 0)) == by_key
    many = await searches(records._SELECT_MANY, ("[0]",))
    assert [step for step in many if "json_each" not in step] == by_key
    # An invoice from LND is found by its add index, or among the few rows without one;
    # an event without an add index finds it by hash.
    by_add_index = "SEARCH invoice_tracker_invoices USING INDEX invoice_tracker_invoices_add_index"
    assert await searches(f"SELECT {records._ROW_BY_ADD_INDEX}", (1, H1, 0)) == [
        "SCAN CONSTANT ROW",
        f"{by_add_index} (add_index=?)",
        f"{by_add_index} (add_index=? AND hash_key=?)",
    ]
    assert await searches(f"SELECT {records._ROW_BY_HASH}", (0, H1, 0)) == ["SCAN CONSTANT ROW", *by_key]
    indexes = await store.fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'invoice_tracker_invoices'"
    )
    assert not any(r[0].startswith("sqlite_autoindex") for r in indexes)
    rows = await store.fetchall("SELECT payment_hash FROM invoice_tracker_invoices ORDER BY id")
    assert [r[0] for r in rows] == [H1, H2]


async def test_hashes_that_share_a_key_keep_rows_of_their_own(
    store: StoreHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real hashes share a key with odds of 2^-64 per pair; here every hash has key 7.
    monkeypatch.setattr(records, "hash_key", lambda payment_hash: 7)
    await apply(store, created(H1, 1, memo="coffee"), created(H2, 2, memo="tea"))
    await apply(store, InvoiceSettled(id=3, payment_hash=H1, amt_paid_msat=5000, add_index=1))
    await records.record_creation(
        store,
        records.CreatedInvoice(
            payment_hash=H2,
            payment_request="lnbcrt1fake",
            memo="tea",
            value_msat=5000,
            created_at=1,
            expires_at=2,
            add_index=2,
            metadata={"order": 7},
        ),
    )
    rows = await store.fetchall("SELECT payment_hash, hash_key FROM invoice_tracker_invoices ORDER BY id")
    assert [tuple(r) for r in rows] == [(H1, 7), (H2, 7)]
    lookups = records.InvoiceLookups(store)
    one, two = await asyncio.gather(lookups.get(H1), lookups.get(H2))
    assert one is not None and (one["memo"], one["status"], one["metadata"]) == ("coffee", "paid", None)
    assert two is not None and (two["memo"], two["status"], two["metadata"]) == (
        "tea",
        "pending",
        {"order": 7},
    )
    assert (await records.get_invoice(store, H2))["metadata"] == {"order": 7}  # type: ignore[index]
    assert [e["status"] for e in await records.invoice_history(store, H1)] == ["pending", "paid"]
    assert [e["status"] for e in await records.invoice_history(store, H2)] == ["pending"]


async def test_lookups_by_hash_find_rows_before_and_after_their_keys_move(store: StoreHandle) -> None:
    hashes = [f"{i:064x}" for i in range(1, 8)]
    await apply(store, *[created(h, i + 1) for i, h in enumerate(hashes[:5])])
    # Fewer keys than the threshold wait; at it, they move into the index together.
    await store.write(lambda conn: records.merge_new_hashes(conn, at=6))
    assert (await store.fetchone("SELECT COUNT(*) FROM invoice_tracker_new_hashes"))[0] == 5  # type: ignore[index]
    await store.write(lambda conn: records.merge_new_hashes(conn, at=5))
    counts = await store.fetchone(
        "SELECT (SELECT COUNT(*) FROM invoice_tracker_hashes), "
        "(SELECT COUNT(*) FROM invoice_tracker_new_hashes)"
    )
    assert tuple(counts) == (5, 0)  # type: ignore[arg-type]
    await apply(store, *[created(h, i + 6) for i, h in enumerate(hashes[5:])])
    # Events without an add index (a plugin's) find the row by hash, moved or not; one
    # that comes first has its row found again once LND's event brings the add index.
    late = "ee" * 32
    await apply(
        store,
        InvoiceSettled(id=20, payment_hash=hashes[0], amt_paid_msat=5000),
        InvoiceSettled(id=21, payment_hash=hashes[6], amt_paid_msat=5000),
        InvoiceCanceled(id=22, payment_hash=late),
        created(late, 23, add_index=8, memo="late"),
    )
    lookups = records.InvoiceLookups(store)
    found = await asyncio.gather(*[lookups.get(h) for h in [*hashes, late]])
    assert [(i["payment_hash"], i["status"]) for i in found if i is not None] == [
        (h, "paid" if h in (hashes[0], hashes[6]) else "pending") for h in hashes
    ] + [(late, "canceled")]
    for h in (hashes[0], hashes[6]):
        assert (await records.get_invoice(store, h))["status"] == "paid"  # type: ignore[index]
        assert [e["status"] for e in await records.invoice_history(store, h)] == ["pending", "paid"]
    row = await store.fetchone(
        "SELECT COUNT(*), MAX(add_index), MAX(memo) FROM invoice_tracker_invoices WHERE payment_hash = ?",
        (late,),
    )
    assert tuple(row) == (1, 8, "late")  # type: ignore[arg-type]
    assert (await store.fetchone("SELECT COUNT(*) FROM invoice_tracker_invoices"))[0] == 8  # type: ignore[index]
