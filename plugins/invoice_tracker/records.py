"""The invoice tracker's tables and the query API other plugins use.

The tracker keeps one row per invoice (``invoice_tracker_invoices``) and one row per
state change (``invoice_tracker_history``). Rows are written from journal events by the
tracker itself (:func:`apply_events`), and, for invoices the HTTP API creates, once at
creation (:func:`record_creation`) so the fiat amount, exchange rate and metadata given
by the merchant are kept. Both writers use upserts keyed by the payment hash, so either
may come first: the event never touches the creation columns and the creation write
never touches LND's state.

The http_api plugin imports this module (``lightningd_py.plugins.invoice_tracker.records``);
every function takes the caller's ``daemon.store``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from lightningd_py.events import (
    Event,
    InvoiceAccepted,
    InvoiceCanceled,
    InvoiceCreated,
    InvoiceEvent,
    InvoiceExpired,
    InvoiceSettled,
)

if TYPE_CHECKING:
    import sqlite3

    from lightningd_py.store import Migration
    from lightningd_py.store import StoreHandle as Store

__all__ = [
    "FINAL_STATUSES",
    "STATUSES",
    "CreatedInvoice",
    "InvoiceLookups",
    "InvoiceStatus",
    "apply_events",
    "creation_row",
    "decode_cursor",
    "effective_status",
    "encode_cursor",
    "get_invoice",
    "invoice_history",
    "list_invoices",
    "migrations",
    "record_creation",
    "row_to_invoice",
    "status_of_event",
    "write_creation",
]

InvoiceStatus = Literal["pending", "accepted", "paid", "expired", "canceled"]
STATUSES: Final[tuple[InvoiceStatus, ...]] = ("pending", "accepted", "paid", "expired", "canceled")
FINAL_STATUSES: Final[frozenset[str]] = frozenset({"paid", "expired", "canceled"})

_EVENT_STATUS: Final[dict[type[InvoiceEvent], InvoiceStatus]] = {
    InvoiceCreated: "pending",
    InvoiceAccepted: "accepted",
    InvoiceSettled: "paid",
    InvoiceCanceled: "canceled",
    InvoiceExpired: "expired",
}

# A status only moves forward: a redelivered or late "created" never reopens a paid
# invoice, and money received ("paid") outranks an expiry noticed a moment too early.
_STATUS_RANK: Final[dict[str, int]] = {"pending": 0, "accepted": 1, "paid": 3}
_OTHER_RANK: Final = 2  # expired, canceled
_RANK_SQL = (
    "CASE {col} "
    + " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in _STATUS_RANK.items())
    + f" ELSE {_OTHER_RANK} END"
)

_SCHEMA_V1 = """
CREATE TABLE invoice_tracker_invoices (
    payment_hash    TEXT PRIMARY KEY,
    payment_request TEXT NOT NULL DEFAULT '',
    memo            TEXT NOT NULL DEFAULT '',
    value_msat      INTEGER NOT NULL DEFAULT 0,
    amt_paid_msat   INTEGER NOT NULL DEFAULT 0,
    status          TEXT NOT NULL,
    created_at      INTEGER NOT NULL DEFAULT 0,
    expires_at      INTEGER NOT NULL DEFAULT 0,
    settled_at      INTEGER NOT NULL DEFAULT 0,
    preimage        TEXT NOT NULL DEFAULT '',
    add_index       INTEGER NOT NULL DEFAULT 0,
    settle_index    INTEGER NOT NULL DEFAULT 0,
    is_keysend      INTEGER NOT NULL DEFAULT 0,
    private         INTEGER NOT NULL DEFAULT 0,
    fiat_currency   TEXT,
    fiat_amount     TEXT,
    exchange_rate   TEXT,
    metadata        TEXT,
    last_event_id   INTEGER NOT NULL DEFAULT 0,
    updated_at      REAL NOT NULL DEFAULT 0
);
CREATE INDEX invoice_tracker_invoices_created ON invoice_tracker_invoices (created_at, payment_hash);
CREATE INDEX invoice_tracker_invoices_status ON invoice_tracker_invoices (status, created_at);
CREATE TABLE invoice_tracker_history (
    payment_hash  TEXT NOT NULL,
    event_id      INTEGER NOT NULL,
    status        TEXT NOT NULL,
    time          REAL NOT NULL,
    amt_paid_msat INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (payment_hash, event_id)
) WITHOUT ROWID;
"""


# Invoices get an id in the order they are first written; the creation-time index breaks
# ties on it, and an invoice's history is keyed by it. Both were keyed by the payment
# hash, which is random: a burst of invoices created in the same second landed all over
# the creation index, and their history rows all over the history table, so each commit
# rewrote a page of both per invoice. Now a burst appends to them, and only the hash's
# own unique index is written at random. The ids of existing rows are their rowids.
_SCHEMA_V2 = """
CREATE TABLE invoice_tracker_invoices_v2 (
    id              INTEGER PRIMARY KEY,
    payment_hash    TEXT NOT NULL UNIQUE,
    payment_request TEXT NOT NULL DEFAULT '',
    memo            TEXT NOT NULL DEFAULT '',
    value_msat      INTEGER NOT NULL DEFAULT 0,
    amt_paid_msat   INTEGER NOT NULL DEFAULT 0,
    status          TEXT NOT NULL,
    created_at      INTEGER NOT NULL DEFAULT 0,
    expires_at      INTEGER NOT NULL DEFAULT 0,
    settled_at      INTEGER NOT NULL DEFAULT 0,
    preimage        TEXT NOT NULL DEFAULT '',
    add_index       INTEGER NOT NULL DEFAULT 0,
    settle_index    INTEGER NOT NULL DEFAULT 0,
    is_keysend      INTEGER NOT NULL DEFAULT 0,
    private         INTEGER NOT NULL DEFAULT 0,
    fiat_currency   TEXT,
    fiat_amount     TEXT,
    exchange_rate   TEXT,
    metadata        TEXT,
    last_event_id   INTEGER NOT NULL DEFAULT 0,
    updated_at      REAL NOT NULL DEFAULT 0
);
INSERT INTO invoice_tracker_invoices_v2
    SELECT rowid, payment_hash, payment_request, memo, value_msat, amt_paid_msat, status,
           created_at, expires_at, settled_at, preimage, add_index, settle_index, is_keysend,
           private, fiat_currency, fiat_amount, exchange_rate, metadata, last_event_id, updated_at
    FROM invoice_tracker_invoices ORDER BY rowid;
CREATE TABLE invoice_tracker_history_v2 (
    invoice_id    INTEGER NOT NULL,
    event_id      INTEGER NOT NULL,
    status        TEXT NOT NULL,
    time          REAL NOT NULL,
    amt_paid_msat INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (invoice_id, event_id)
) WITHOUT ROWID;
INSERT INTO invoice_tracker_history_v2
    SELECT i.id, h.event_id, h.status, h.time, h.amt_paid_msat
    FROM invoice_tracker_history AS h JOIN invoice_tracker_invoices_v2 AS i USING (payment_hash);
DROP TABLE invoice_tracker_history;
DROP TABLE invoice_tracker_invoices;
ALTER TABLE invoice_tracker_invoices_v2 RENAME TO invoice_tracker_invoices;
ALTER TABLE invoice_tracker_history_v2 RENAME TO invoice_tracker_history;
CREATE INDEX invoice_tracker_invoices_created ON invoice_tracker_invoices (created_at);
CREATE INDEX invoice_tracker_invoices_status ON invoice_tracker_invoices (status, created_at);
"""


def migrations() -> list[Migration]:
    """The tracker's migrations (see ``ldp_migrations``)."""
    from lightningd_py.store import Migration

    return [Migration(version=1, sql=_SCHEMA_V1), Migration(version=2, sql=_SCHEMA_V2)]


def status_of_event(event: InvoiceEvent) -> InvoiceStatus:
    """The tracker status an invoice event puts the invoice in."""
    for cls, status in _EVENT_STATUS.items():
        if isinstance(event, cls):
            return status
    raise TypeError(f"not an invoice event type: {type(event).__name__}")


_UPSERT_EVENT = f"""
INSERT INTO invoice_tracker_invoices (
    payment_hash, payment_request, memo, value_msat, amt_paid_msat, status, created_at,
    expires_at, settled_at, preimage, add_index, settle_index, is_keysend, private,
    last_event_id, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (payment_hash) DO UPDATE SET
    payment_request = CASE WHEN excluded.payment_request != '' THEN excluded.payment_request
                           ELSE payment_request END,
    memo = CASE WHEN excluded.memo != '' THEN excluded.memo ELSE memo END,
    value_msat = CASE WHEN excluded.value_msat != 0 THEN excluded.value_msat ELSE value_msat END,
    amt_paid_msat = max(amt_paid_msat, excluded.amt_paid_msat),
    status = CASE WHEN {_RANK_SQL.format(col="excluded.status")} > {_RANK_SQL.format(col="status")}
                  THEN excluded.status ELSE status END,
    created_at = CASE WHEN excluded.created_at != 0 THEN excluded.created_at ELSE created_at END,
    expires_at = CASE WHEN excluded.expires_at != 0 THEN excluded.expires_at ELSE expires_at END,
    settled_at = max(settled_at, excluded.settled_at),
    preimage = CASE WHEN excluded.preimage != '' THEN excluded.preimage ELSE preimage END,
    add_index = max(add_index, excluded.add_index),
    settle_index = max(settle_index, excluded.settle_index),
    is_keysend = excluded.is_keysend,
    private = excluded.private,
    last_event_id = max(last_event_id, excluded.last_event_id),
    updated_at = excluded.updated_at
"""

# Written after the invoice's own upsert, so its row (and id) is there to look up.
_INSERT_HISTORY = """
INSERT OR IGNORE INTO invoice_tracker_history (invoice_id, event_id, status, time, amt_paid_msat)
VALUES ((SELECT id FROM invoice_tracker_invoices WHERE payment_hash = ?), ?, ?, ?, ?)
"""


def _event_rows(event: InvoiceEvent) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    status = status_of_event(event)
    expires_at = event.expires_at if event.creation_date and event.expiry else 0
    invoice = (
        event.payment_hash,
        event.payment_request,
        event.memo,
        event.value_msat,
        event.amt_paid_msat,
        status,
        event.creation_date,
        expires_at,
        event.settle_date,
        event.preimage,
        event.add_index,
        event.settle_index,
        int(event.is_keysend),
        int(event.private),
        event.id,
        time.time(),
    )
    history = (event.payment_hash, event.id, status, event.time, event.amt_paid_msat)
    return invoice, history


async def apply_events(store: Store, events: Iterable[Event]) -> None:
    """Record the invoice events of a run (others are skipped), one statement per table.

    Idempotent: a redelivered event (same ``event.id``) changes nothing; the upsert's
    merge rules make the result the same as recording the events one by one, in order.
    """
    invoices: dict[str, tuple[Any, ...]] = {}
    history: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, InvoiceEvent):
            invoice, change = _event_rows(event)
            earlier = invoices.get(event.payment_hash)
            invoices[event.payment_hash] = invoice if earlier is None else _merge_rows(earlier, invoice)
            history.append(change)
    if invoices:
        await store.executemany(_UPSERT_EVENT, invoices.values())
        await store.executemany(_INSERT_HISTORY, history)


def _merge_rows(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """Rows ``a`` then ``b`` of one invoice as the one row that, upserted, leaves what
    upserting ``a`` and then ``b`` leaves: each column follows ``_UPSERT_EVENT``'s rule,
    and every rule is associative. A run's "created" and "settled" are one write."""
    return (
        a[0],
        b[1] or a[1],  # payment_request
        b[2] or a[2],  # memo
        b[3] or a[3],  # value_msat
        max(a[4], b[4]),  # amt_paid_msat
        b[5] if _STATUS_RANK.get(b[5], _OTHER_RANK) > _STATUS_RANK.get(a[5], _OTHER_RANK) else a[5],  # status
        b[6] or a[6],  # created_at
        b[7] or a[7],  # expires_at
        max(a[8], b[8]),  # settled_at
        b[9] or a[9],  # preimage
        max(a[10], b[10]),  # add_index
        max(a[11], b[11]),  # settle_index
        b[12],  # is_keysend
        b[13],  # private
        max(a[14], b[14]),  # last_event_id
        b[15],  # updated_at
    )


@dataclass(frozen=True, slots=True)
class CreatedInvoice:
    """What the creator of an invoice knows at creation time.

    :ivar fiat_currency: ISO 4217 code when the amount was given in a fiat currency.
    :ivar fiat_amount: the fiat amount as a decimal string.
    :ivar exchange_rate: the price of 1 BTC in ``fiat_currency`` used for the conversion.
    :ivar metadata: free-form JSON object (order id, customer reference).
    """

    payment_hash: str
    payment_request: str
    memo: str
    value_msat: int
    created_at: int
    expires_at: int
    add_index: int = 0
    private: bool = False
    fiat_currency: str | None = None
    fiat_amount: str | None = None
    exchange_rate: str | None = None
    metadata: dict[str, Any] | None = None


_UPSERT_CREATION = """
INSERT INTO invoice_tracker_invoices (
    payment_hash, payment_request, memo, value_msat, status, created_at, expires_at,
    add_index, private, fiat_currency, fiat_amount, exchange_rate, metadata, updated_at)
VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (payment_hash) DO UPDATE SET
    fiat_currency = excluded.fiat_currency,
    fiat_amount = excluded.fiat_amount,
    exchange_rate = excluded.exchange_rate,
    metadata = excluded.metadata
"""


def creation_row(inv: CreatedInvoice) -> tuple[Any, ...]:
    """The parameters of the creation upsert (for callers batching it in ``store.write``)."""
    return (
        inv.payment_hash,
        inv.payment_request,
        inv.memo,
        inv.value_msat,
        inv.created_at,
        inv.expires_at,
        inv.add_index,
        int(inv.private),
        inv.fiat_currency,
        inv.fiat_amount,
        inv.exchange_rate,
        json.dumps(inv.metadata, separators=(",", ":")) if inv.metadata is not None else None,
        time.time(),
    )


def write_creation(conn: sqlite3.Connection, inv: CreatedInvoice) -> None:
    """Write a creation record on the writer connection (inside ``store.write``)."""
    conn.execute(_UPSERT_CREATION, creation_row(inv))


async def record_creation(store: Store, inv: CreatedInvoice) -> None:
    """Record an invoice the caller just created in LND, with its fiat and metadata.

    Safe whether or not the tracker already saw the ``InvoiceCreated`` event: LND's
    fields are only inserted when the row does not exist yet, and the creation columns
    are always set. Returns after the row is committed.
    """
    await store.write(lambda conn: write_creation(conn, inv))


_COLUMNS = (
    "payment_hash, payment_request, memo, value_msat, amt_paid_msat, status, created_at, "
    "expires_at, settled_at, preimage, add_index, settle_index, is_keysend, private, "
    "fiat_currency, fiat_amount, exchange_rate, metadata"
)


def effective_status(status: str, expires_at: int, now: float) -> str:
    """An unpaid invoice past its expiry is expired even before the daemon notices it."""
    if status == "pending" and expires_at and now >= expires_at:
        return "expired"
    return status


def row_to_invoice(row: Sequence[Any], now: float | None = None) -> dict[str, Any]:
    """A JSON-ready dict of an invoice row selected with the tracker's column list."""
    now = time.time() if now is None else now
    (
        payment_hash,
        payment_request,
        memo,
        value_msat,
        amt_paid_msat,
        status,
        created_at,
        expires_at,
        settled_at,
        preimage,
        add_index,
        settle_index,
        is_keysend,
        private,
        fiat_currency,
        fiat_amount,
        exchange_rate,
        metadata,
    ) = row
    fiat = None
    if fiat_currency:
        fiat = {"currency": fiat_currency, "amount": fiat_amount, "exchange_rate": exchange_rate}
    return {
        "payment_hash": payment_hash,
        "payment_request": payment_request,
        "memo": memo,
        "amount_msat": value_msat,
        "amount_paid_msat": amt_paid_msat,
        "status": effective_status(status, expires_at, now),
        "created_at": created_at,
        "expires_at": expires_at,
        "settled_at": settled_at or None,
        "preimage": preimage or None,
        "add_index": add_index,
        "settle_index": settle_index,
        "is_keysend": bool(is_keysend),
        "private": bool(private),
        "fiat": fiat,
        "metadata": json.loads(metadata) if metadata else None,
    }


_SELECT_ONE = f"SELECT {_COLUMNS} FROM invoice_tracker_invoices WHERE payment_hash = ?"


async def get_invoice(store: Store, payment_hash: str) -> dict[str, Any] | None:
    """One invoice as a JSON-ready dict, or None when the tracker does not know it."""
    row = await store.fetchone(_SELECT_ONE, (payment_hash,))
    return row_to_invoice(row) if row is not None else None


_RETRY = object()


class InvoiceLookups:
    """Point lookups by payment hash, batched: requests that arrive in the same event
    loop turn share one read (``WHERE payment_hash IN (...)``), so a burst of lookups
    costs one trip to a reader thread instead of one each.

    The first caller of a batch leads it: it lets one loop turn pass for others to
    join, then reads for all of them. No task is created.
    """

    MAX_BATCH = 500

    def __init__(self, store: Store) -> None:
        self._store = store
        self._open: dict[str, list[asyncio.Future[Any]]] | None = None

    async def get(self, payment_hash: str) -> dict[str, Any] | None:
        """One invoice as a JSON-ready dict, or None (see :func:`get_invoice`)."""
        while True:
            batch = self._open
            if batch is not None and len(batch) < self.MAX_BATCH:
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                batch.setdefault(payment_hash, []).append(fut)
                value = await fut
                if value is _RETRY:
                    continue
                return value  # type: ignore[no-any-return]
            return await self._lead(payment_hash)

    async def _lead(self, payment_hash: str) -> dict[str, Any] | None:
        batch: dict[str, list[asyncio.Future[Any]]] = {payment_hash: []}
        self._open = batch
        try:
            try:
                await asyncio.sleep(0)
            finally:
                if self._open is batch:
                    self._open = None
            hashes = list(batch)
            rows = await self._store.read(lambda conn: _select_many(conn, hashes))
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            for futures in batch.values():
                for fut in futures:
                    if not fut.done():
                        # A leader cancelled (its client went away) lets the others retry.
                        if cancelled:
                            fut.set_result(_RETRY)
                        else:
                            fut.set_exception(exc)
            raise
        now = time.time()
        found = {row[0]: row for row in rows}
        for h, futures in batch.items():
            row = found.get(h)
            for fut in futures:
                if not fut.done():
                    fut.set_result(row_to_invoice(row, now) if row is not None else None)
        row = found.get(payment_hash)
        return row_to_invoice(row, now) if row is not None else None


# The hashes go in as one JSON array: one statement for any number of them.
_SELECT_MANY = (
    f"SELECT {_COLUMNS} FROM invoice_tracker_invoices WHERE payment_hash IN (SELECT value FROM json_each(?))"
)


def _select_many(conn: sqlite3.Connection, hashes: list[str]) -> list[Any]:
    return conn.execute(_SELECT_MANY, (json.dumps(hashes),)).fetchall()


async def invoice_history(store: Store, payment_hash: str) -> list[dict[str, Any]]:
    """The invoice's state changes, oldest first."""
    rows = await store.fetchall(
        "SELECT h.event_id, h.status, h.time, h.amt_paid_msat FROM invoice_tracker_invoices AS i "
        "JOIN invoice_tracker_history AS h ON h.invoice_id = i.id WHERE i.payment_hash = ? "
        "ORDER BY h.event_id",
        (payment_hash,),
    )
    return [{"event_id": r[0], "status": r[1], "time": r[2], "amount_paid_msat": r[3]} for r in rows]


def encode_cursor(created_at: int, invoice_id: int) -> str:
    """An opaque pagination cursor pointing just past an invoice (its creation time and
    its row's id)."""
    return base64.urlsafe_b64encode(f"{created_at}:{invoice_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """Read a cursor made by :func:`encode_cursor`; ValueError when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, invoice_id = raw.partition(":")
        return int(created), int(invoice_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a cursor returned by this API") from exc


async def list_invoices(
    store: Store,
    *,
    status: str | None = None,
    created_after: int | None = None,
    created_before: int | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], str | None]:
    """Invoices, newest first, with a cursor for the next page (None on the last page).

    :param status: only invoices in this (effective) status.
    :param created_after: only invoices created at or after this unix time.
    :param created_before: only invoices created before this unix time.
    :param cursor: the ``next_cursor`` of the previous page.
    :raises ValueError: the cursor is not one this API returned.
    """
    now = int(time.time())
    where: list[str] = []
    params: list[Any] = []
    if status == "expired":
        where.append("(status = 'expired' OR (status = 'pending' AND expires_at != 0 AND expires_at <= ?))")
        params.append(now)
    elif status == "pending":
        where.append("status = 'pending' AND (expires_at = 0 OR expires_at > ?)")
        params.append(now)
    elif status is not None:
        where.append("status = ?")
        params.append(status)
    if created_after is not None:
        where.append("created_at >= ?")
        params.append(created_after)
    if created_before is not None:
        where.append("created_at < ?")
        params.append(created_before)
    if cursor is not None:
        c_created, c_id = decode_cursor(cursor)
        where.append("(created_at, id) < (?, ?)")
        params.extend((c_created, c_id))
    sql = f"SELECT {_COLUMNS}, id FROM invoice_tracker_invoices"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    params.append(limit + 1)
    rows = await store.fetchall(sql, tuple(params))
    invoices = [row_to_invoice(r[:-1], now) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last["created_at"], last["id"])
    return invoices, next_cursor
