"""The metrics plugin's own record of activity, fed by journal events.

Three tables, all owned by this plugin so its statistics never depend on another
plugin's schema:

* ``metrics_tx``: one row per invoice, payment, forward and rebalance, in its latest
  state (the transaction history and every windowed statistic read it; the time index
  covers the statistics' columns and the history's keyset order, so neither touches
  the table itself);
* ``metrics_tx_hourly``: sums of ``metrics_tx`` per hour, kind and status, moved in
  the same unit as every ``metrics_tx`` write (windowed statistics read hours, plus the
  rows of the window's partial first and last hours);
* ``metrics_totals``: running totals per event type (count, amount, fee) behind the
  Prometheus activity counters, so they survive restarts instead of resetting;
* ``metrics_channels`` and ``metrics_channel_samples``: what each channel was (peer,
  capacity, open and close times) and periodic balance samples (balance ratio over
  time, uptime).

Events arrive at least once: every write here is idempotent (upserts guarded by the
event's journal id or by a state rank), and the in-memory totals skip any event at
or below the last id already counted for its type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from lightningd_py.events import (
    REBALANCE_MEMO_PREFIX,
    ChannelClosed,
    ChannelEvent,
    Event,
    ForwardEvent,
    ForwardFailed,
    ForwardSettled,
    InvoiceEvent,
    InvoiceSettled,
    PaymentEvent,
    RebalanceEvent,
    decode_event,
)
from lightningd_py.store import Migration

if TYPE_CHECKING:
    import sqlite3

    from lightningd_py.store import StoreHandle

    from .snapshot import NodeSnapshot

__all__ = [
    "MIGRATIONS",
    "REBALANCE_INVOICE",
    "Ledger",
    "Total",
    "TxRow",
    "invoice_key",
    "total_name",
    "tx_row",
]


REBALANCE_INVOICE = f"substr(description, 1, {len(REBALANCE_MEMO_PREFIX)}) = '{REBALANCE_MEMO_PREFIX}'"
"""Which ``metrics_tx`` invoices are the rebalancer's own (by their memo): the hash index
holds them beside every other kind, and a query finds them through it only with this
same condition."""


def invoice_key(event: InvoiceEvent) -> str:
    """An invoice's key in ``metrics_tx``: its add index, zero-padded so keys sort in the
    order invoices were added (the payment hash for an event without one, which only a
    third-party plugin could emit)."""
    return f"{event.add_index:012d}" if event.add_index > 0 else event.payment_hash


def _key_invoices_by_add_index(conn: sqlite3.Connection) -> None:
    """Migration 6: each invoice row's add index is read from the journal event the row
    last took its state from (the ledger's rows come from journal events only)."""
    keys: list[tuple[str, int]] = []
    found = conn.execute(
        "SELECT m.id, j.id, j.body FROM metrics_tx AS m JOIN journal AS j ON j.id = m.event_id "
        "WHERE m.kind = 'invoice'"
    )
    for row_id, event_id, body in found:
        try:
            event = decode_event(body, event_id)
        except msgspec.DecodeError:
            continue  # an event this version cannot read: the row keeps its hash key
        if isinstance(event, InvoiceEvent) and event.add_index > 0:
            keys.append((invoice_key(event), row_id))
    # Add indexes are unique in LND; a row that would collide keeps its hash key.
    conn.executemany("UPDATE OR IGNORE metrics_tx SET key = ? WHERE id = ?", keys)
    conn.execute("DROP INDEX metrics_tx_hash")
    conn.execute(
        "CREATE INDEX metrics_tx_hash ON metrics_tx (payment_hash) WHERE payment_hash != '' "
        f"AND (kind != 'invoice' OR {REBALANCE_INVOICE})"
    )


MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE metrics_tx (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            status TEXT NOT NULL,
            rank INTEGER NOT NULL,
            time REAL NOT NULL,
            created REAL NOT NULL,
            amount_msat INTEGER NOT NULL,
            fee_msat INTEGER NOT NULL,
            chan_in INTEGER NOT NULL,
            chan_out INTEGER NOT NULL,
            payment_hash TEXT NOT NULL,
            description TEXT NOT NULL,
            event_id INTEGER NOT NULL,
            PRIMARY KEY (kind, key)
        ) WITHOUT ROWID;
        CREATE INDEX metrics_tx_time ON metrics_tx (time, kind, key, status, amount_msat, fee_msat);
        CREATE INDEX metrics_tx_kind_time ON metrics_tx (kind, time);
        CREATE INDEX metrics_tx_kind_created ON metrics_tx (kind, created);
        CREATE INDEX metrics_tx_hash ON metrics_tx (payment_hash) WHERE payment_hash != '';
        CREATE TABLE metrics_totals (
            name TEXT PRIMARY KEY,
            count INTEGER NOT NULL,
            amount_msat INTEGER NOT NULL,
            fee_msat INTEGER NOT NULL,
            last_event_id INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE metrics_channels (
            chan_id INTEGER PRIMARY KEY,
            channel_point TEXT NOT NULL,
            peer_pubkey TEXT NOT NULL,
            peer_alias TEXT NOT NULL,
            capacity_sat INTEGER NOT NULL,
            opened REAL,
            closed REAL
        );
        CREATE TABLE metrics_channel_samples (
            chan_id INTEGER NOT NULL,
            time REAL NOT NULL,
            capacity_sat INTEGER NOT NULL,
            local_sat INTEGER NOT NULL,
            remote_sat INTEGER NOT NULL,
            active INTEGER NOT NULL,
            PRIMARY KEY (chan_id, time)
        ) WITHOUT ROWID;
        CREATE INDEX metrics_channel_samples_time ON metrics_channel_samples (time);
        """,
    ),
    # Hourly sums of metrics_tx by kind and status, kept by triggers in the same
    # statement as each write, so windowed statistics read hours, not rows.
    Migration(
        2,
        """
        CREATE TABLE metrics_tx_hourly (
            hour INTEGER NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            count INTEGER NOT NULL,
            amount_msat INTEGER NOT NULL,
            fee_msat INTEGER NOT NULL,
            PRIMARY KEY (hour, kind, status)
        ) WITHOUT ROWID;
        INSERT INTO metrics_tx_hourly
            SELECT CAST(time / 3600 AS INTEGER), kind, status, COUNT(*), SUM(amount_msat), SUM(fee_msat)
            FROM metrics_tx GROUP BY 1, 2, 3;
        CREATE TRIGGER metrics_tx_hourly_insert AFTER INSERT ON metrics_tx BEGIN
            INSERT INTO metrics_tx_hourly
            VALUES (CAST(NEW.time / 3600 AS INTEGER), NEW.kind, NEW.status, 1, NEW.amount_msat, NEW.fee_msat)
            ON CONFLICT (hour, kind, status) DO UPDATE SET
                count = count + 1, amount_msat = amount_msat + excluded.amount_msat,
                fee_msat = fee_msat + excluded.fee_msat;
        END;
        CREATE TRIGGER metrics_tx_hourly_update AFTER UPDATE ON metrics_tx BEGIN
            UPDATE metrics_tx_hourly
            SET count = count - 1, amount_msat = amount_msat - OLD.amount_msat,
                fee_msat = fee_msat - OLD.fee_msat
            WHERE hour = CAST(OLD.time / 3600 AS INTEGER) AND kind = OLD.kind AND status = OLD.status;
            INSERT INTO metrics_tx_hourly
            VALUES (CAST(NEW.time / 3600 AS INTEGER), NEW.kind, NEW.status, 1, NEW.amount_msat, NEW.fee_msat)
            ON CONFLICT (hour, kind, status) DO UPDATE SET
                count = count + 1, amount_msat = amount_msat + excluded.amount_msat,
                fee_msat = fee_msat + excluded.fee_msat;
        END;
        """,
    ),
    # The hourly sums are kept by the ledger itself, once per run of events (a run's
    # rows for one transaction are merged first), instead of by a trigger per row.
    Migration(
        3,
        """
        DROP TRIGGER metrics_tx_hourly_insert;
        DROP TRIGGER metrics_tx_hourly_update;
        """,
    ),
    # An invoice's key is its payment hash, so the primary key finds invoices by hash:
    # the hash index leaves them out (one random-order index less per invoice written).
    Migration(
        4,
        """
        DROP INDEX metrics_tx_hash;
        CREATE INDEX metrics_tx_hash ON metrics_tx (payment_hash)
            WHERE payment_hash != '' AND kind != 'invoice';
        """,
    ),
    # Rows get an id in the order they are first written, and the time indexes break
    # ties on it instead of on the key. Keys are payment hashes and the like: random, so
    # a burst of rows with the same second (or the same creation time) landed all over
    # each time index, and every commit rewrote a page of it per row. Now a burst
    # appends to the time indexes, and only the (kind, key) index is written at random.
    Migration(
        5,
        """
        CREATE TABLE metrics_tx_v5 (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            status TEXT NOT NULL,
            rank INTEGER NOT NULL,
            time REAL NOT NULL,
            created REAL NOT NULL,
            amount_msat INTEGER NOT NULL,
            fee_msat INTEGER NOT NULL,
            chan_in INTEGER NOT NULL,
            chan_out INTEGER NOT NULL,
            payment_hash TEXT NOT NULL,
            description TEXT NOT NULL,
            event_id INTEGER NOT NULL,
            UNIQUE (kind, key)
        );
        INSERT INTO metrics_tx_v5 (kind, key, status, rank, time, created, amount_msat, fee_msat,
                                   chan_in, chan_out, payment_hash, description, event_id)
            SELECT kind, key, status, rank, time, created, amount_msat, fee_msat,
                   chan_in, chan_out, payment_hash, description, event_id
            FROM metrics_tx ORDER BY event_id;
        DROP TABLE metrics_tx;
        ALTER TABLE metrics_tx_v5 RENAME TO metrics_tx;
        CREATE INDEX metrics_tx_time ON metrics_tx (time, kind, id, status, amount_msat, fee_msat);
        CREATE INDEX metrics_tx_kind_time ON metrics_tx (kind, time);
        CREATE INDEX metrics_tx_kind_created ON metrics_tx (kind, created);
        CREATE INDEX metrics_tx_hash ON metrics_tx (payment_hash)
            WHERE payment_hash != '' AND kind != 'invoice';
        """,
    ),
    # Invoices are keyed by add index (``invoice_key``) instead of payment hash: keys in
    # the order invoices are added, so a burst appends to the (kind, key) index instead
    # of writing a page of it per invoice. The rebalances' own invoices, still found by
    # hash, join the hash index.
    Migration(6, _key_invoices_by_add_index),
]

# Later states win over earlier ones; a replayed "created" never downgrades a settled row.
_RANK = {"open": 0, "accepted": 1}

# The keys go in as one JSON array: one statement for any number of keys.
_SELECT_TX = (
    "SELECT t.key, t.status, t.rank, t.time, t.created, t.amount_msat, t.fee_msat, "
    "t.description, t.event_id, t.payment_hash "
    "FROM json_each(?) AS j CROSS JOIN metrics_tx AS t ON t.kind = ? AND t.key = j.value"
)

_INSERT_TX = (
    "INSERT INTO metrics_tx (kind, key, status, rank, time, created, amount_msat, fee_msat, "
    "chan_in, chan_out, payment_hash, description, event_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# A row's later state is an UPDATE of the columns that change: sqlite then rewrites only
# the indexes on those columns (a REPLACE deletes and re-inserts every index entry).
# The creation time never changes; the payment hash seldom does (a rebalance learns its
# hash from a later attempt) and has its own statement, so its index is left alone.
_CHANGING = (
    "status = ?, rank = ?, time = ?, amount_msat = ?, fee_msat = ?, chan_in = ?, chan_out = ?, "
    "description = ?, event_id = ?"
)
_UPDATE_TX = f"UPDATE metrics_tx SET {_CHANGING} WHERE kind = ? AND key = ?"
_UPDATE_TX_HASH = f"UPDATE metrics_tx SET {_CHANGING}, payment_hash = ? WHERE kind = ? AND key = ?"

_ADD_HOURLY = """
INSERT INTO metrics_tx_hourly (hour, kind, status, count, amount_msat, fee_msat)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (hour, kind, status) DO UPDATE SET
    count = count + excluded.count, amount_msat = amount_msat + excluded.amount_msat,
    fee_msat = fee_msat + excluded.fee_msat
"""

_SET_TOTAL = """
INSERT INTO metrics_totals (name, count, amount_msat, fee_msat, last_event_id)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    count = excluded.count, amount_msat = excluded.amount_msat,
    fee_msat = excluded.fee_msat, last_event_id = excluded.last_event_id
WHERE excluded.last_event_id > metrics_totals.last_event_id
"""

_UPSERT_CHANNEL = """
INSERT INTO metrics_channels (chan_id, channel_point, peer_pubkey, peer_alias, capacity_sat, opened, closed)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (chan_id) DO UPDATE SET
    channel_point = CASE WHEN excluded.channel_point != '' THEN excluded.channel_point ELSE channel_point END,
    peer_pubkey = CASE WHEN excluded.peer_pubkey != '' THEN excluded.peer_pubkey ELSE peer_pubkey END,
    peer_alias = CASE WHEN excluded.peer_alias != '' THEN excluded.peer_alias ELSE peer_alias END,
    capacity_sat = CASE WHEN excluded.capacity_sat > 0 THEN excluded.capacity_sat ELSE capacity_sat END,
    opened = COALESCE(opened, excluded.opened),
    closed = COALESCE(excluded.closed, closed)
"""


@dataclass(slots=True)
class Total:
    """Running totals of one event type (see ``metrics_totals``)."""

    count: int = 0
    amount_msat: int = 0
    fee_msat: int = 0
    last_event_id: int = 0


class TxRow(NamedTuple):
    """One ``metrics_tx`` row as written for an event, in ``_INSERT_TX``'s column order
    (a tuple: one is made per event, and a frozen dataclass cost several times more)."""

    kind: str
    key: str
    status: str
    rank: int
    time: float
    created: float
    amount_msat: int
    fee_msat: int
    chan_in: int
    chan_out: int
    payment_hash: str
    description: str
    event_id: int


def _status(event: Event) -> str:
    return event.type.split(".", 1)[1]


def total_name(event: Event) -> str:
    """The ``metrics_totals`` name of an event: its type, ``rebalance.dry_run`` for dry runs."""
    if isinstance(event, RebalanceEvent) and event.dry_run:
        return "rebalance.dry_run"
    return event.type


def tx_row(event: Event) -> TxRow | None:
    """The history row an event leaves, or None for events that are not transactions."""
    if isinstance(event, InvoiceEvent):
        status = _status(event)
        settled = isinstance(event, InvoiceSettled)
        when = float(event.settle_date or event.time) if settled else float(event.time)
        if status == "created":
            status = "open"
            when = float(event.creation_date or event.time)
        return TxRow(
            kind="invoice",
            key=invoice_key(event),
            status=status,
            rank=_RANK.get(status, 2),
            time=when,
            created=float(event.creation_date or event.time),
            amount_msat=event.amt_paid_msat if settled else event.value_msat,
            fee_msat=0,
            chan_in=0,
            chan_out=0,
            payment_hash=event.payment_hash,
            description=event.memo,
            event_id=event.id,
        )
    if isinstance(event, PaymentEvent):
        created = event.creation_time_ns / 1e9 if event.creation_time_ns else event.time
        return TxRow(
            kind="payment",
            key=f"{event.payment_hash}:{event.payment_index}",
            status=_status(event),
            rank=2,
            time=float(event.time),
            created=float(created),
            amount_msat=event.value_msat,
            fee_msat=event.fee_msat,
            chan_in=0,
            chan_out=0,
            payment_hash=event.payment_hash,
            description=event.failure_reason,
            event_id=event.id,
        )
    if isinstance(event, ForwardEvent):
        when = event.timestamp_ns / 1e9 if event.timestamp_ns else event.time
        settled = isinstance(event, ForwardSettled)
        return TxRow(
            kind="forward",
            key=f"{event.incoming_chan_id}:{event.incoming_htlc_id}:{event.outgoing_chan_id}:{event.outgoing_htlc_id}",
            status=_status(event),
            rank=2,
            time=float(when),
            created=float(when),
            amount_msat=event.amt_out_msat,
            fee_msat=event.fee_msat if settled else 0,
            chan_in=event.incoming_chan_id,
            chan_out=event.outgoing_chan_id,
            payment_hash="",
            description=event.failure if isinstance(event, ForwardFailed) else "",
            event_id=event.id,
        )
    if isinstance(event, RebalanceEvent):
        status = "dry_run" if event.dry_run else _status(event)
        return TxRow(
            kind="rebalance",
            key=event.rebalance_id,
            status=status,
            rank=2,
            time=float(event.time),
            created=float(event.time),
            amount_msat=event.amount_msat,
            fee_msat=event.fee_msat if status == "succeeded" else 0,
            chan_in=event.incoming_chan_id,
            chan_out=event.outgoing_chan_id,
            payment_hash=event.payment_hash,
            description=event.failure_reason,
            event_id=event.id,
        )
    return None


def _supersedes(new: TxRow, old: TxRow) -> bool:
    """Whether ``new`` replaces ``old`` as a transaction's state: a later state wins;
    within a state, the later event (a replayed "created" never downgrades a row)."""
    return new.rank > old.rank or (new.rank == old.rank and new.event_id > old.event_id)


def _succeed(new: TxRow, old: TxRow) -> TxRow:
    """``new`` as it is stored over ``old``: the first sighting's creation time stays,
    and an empty description keeps the one known before."""
    return new._replace(created=old.created, description=new.description or old.description)


def merge_tx_rows(rows: Iterable[TxRow]) -> dict[tuple[str, str], TxRow]:
    """The rows of a run of events, one per transaction (a burst's "created" and
    "settled" make one), merged under the rule :func:`write_tx_rows` applies to the
    stored row."""
    merged: dict[tuple[str, str], TxRow] = {}
    for row in rows:
        ident = (row.kind, row.key)
        current = merged.get(ident)
        if current is None:
            merged[ident] = row
        elif _supersedes(row, current):
            merged[ident] = _succeed(row, current)
    return merged


def write_tx_rows(conn: sqlite3.Connection, merged: Mapping[tuple[str, str], TxRow]) -> None:
    """Store the merged rows of a run (:func:`merge_tx_rows`), in the writer's transaction.

    Each row is compared with the stored one under the same rule as the merge, and the
    hourly sums move by the difference: the result equals writing the run's rows one by
    one, in order.
    """
    stored: dict[tuple[str, str], TxRow] = {}
    by_kind: dict[str, list[str]] = {}
    for kind, key in merged:
        by_kind.setdefault(kind, []).append(key)
    for kind, keys in by_kind.items():
        for r in conn.execute(_SELECT_TX, (json.dumps(keys), kind)):
            key = r[0]
            stored[(kind, key)] = TxRow(kind, key, r[1], r[2], r[3], r[4], r[5], r[6], 0, 0, r[9], r[7], r[8])
    inserts: list[tuple[object, ...]] = []
    updates: list[tuple[object, ...]] = []
    hash_updates: list[tuple[object, ...]] = []
    hourly: dict[tuple[int, str, str], list[int]] = {}

    def move(row: TxRow, sign: int) -> None:
        sums = hourly.setdefault((int(row.time // 3600), row.kind, row.status), [0, 0, 0])
        sums[0] += sign
        sums[1] += sign * row.amount_msat
        sums[2] += sign * row.fee_msat

    for ident, row in merged.items():
        old = stored.get(ident)
        if old is None:
            move(row, 1)
            inserts.append(row)
            continue
        if not _supersedes(row, old):
            continue
        row = _succeed(row, old)
        move(old, -1)
        move(row, 1)
        change = (
            row.status,
            row.rank,
            row.time,
            row.amount_msat,
            row.fee_msat,
            row.chan_in,
            row.chan_out,
            row.description,
            row.event_id,
        )
        if row.payment_hash == old.payment_hash:
            updates.append((*change, row.kind, row.key))
        else:
            hash_updates.append((*change, row.payment_hash, row.kind, row.key))
    conn.executemany(_INSERT_TX, inserts)
    conn.executemany(_UPDATE_TX, updates)
    conn.executemany(_UPDATE_TX_HASH, hash_updates)
    conn.executemany(
        _ADD_HOURLY,
        [(hour, kind, status, *sums) for (hour, kind, status), sums in hourly.items() if any(sums)],
    )


def _total_amounts(event: Event) -> tuple[int, int]:
    """(amount_msat, fee_msat) an event adds to its type's totals."""
    if isinstance(event, InvoiceSettled):
        return event.amt_paid_msat, 0
    if isinstance(event, InvoiceEvent):
        return event.value_msat, 0
    if isinstance(event, PaymentEvent):
        return event.value_msat, event.fee_msat
    if isinstance(event, ForwardSettled):
        return event.amt_out_msat, event.fee_msat
    if isinstance(event, ForwardEvent):
        return event.amt_out_msat, 0
    if isinstance(event, RebalanceEvent):
        return event.amount_msat, (
            event.fee_msat if not event.dry_run and event.type.endswith("succeeded") else 0
        )
    return 0, 0


class Ledger:
    """Writes activity to the plugin's tables and keeps the running totals in memory.

    :param store: the plugin's store handle.
    """

    def __init__(self, store: StoreHandle) -> None:
        self._store = store
        self.totals: dict[str, Total] = {}

    async def load(self) -> None:
        """Read the durable totals (at start, before any event is handled)."""
        rows = await self._store.fetchall(
            "SELECT name, count, amount_msat, fee_msat, last_event_id FROM metrics_totals"
        )
        self.totals = {
            r["name"]: Total(r["count"], r["amount_msat"], r["fee_msat"], r["last_event_id"]) for r in rows
        }

    async def record(self, event: Event) -> None:
        """Record an invoice, payment, forward or rebalance event (idempotent)."""
        await self.record_run([event])

    async def record_run(self, events: Iterable[Event]) -> None:
        """Record the transaction events of a run (others are skipped), idempotently:
        the rows of the run are merged (:func:`merge_tx_rows`) and written in one unit
        (:func:`write_tx_rows`), the totals in one statement."""
        rows: list[TxRow] = []
        touched: dict[str, Total] = {}
        for event in events:
            row = tx_row(event)
            if row is None:
                continue
            rows.append(row)
            name = total_name(event)
            total = touched[name] = self.totals.setdefault(name, Total())
            # A redelivered event (at or below the last id counted) is not counted twice.
            if event.id == 0 or event.id > total.last_event_id:
                amount, fee = _total_amounts(event)
                total.count += 1
                total.amount_msat += amount
                total.fee_msat += fee
                total.last_event_id = max(total.last_event_id, event.id)
        if not rows:
            return
        # Merged here, while the writer commits what came before.
        merged = merge_tx_rows(rows)
        await self._store.queue(lambda conn: write_tx_rows(conn, merged))
        # The in-memory totals are the source of truth (loaded at start, advanced only
        # here), so a run stores them whole rather than as increments; a redelivered run
        # stores them again, which repairs a write that failed the first time.
        await self._store.executemany(
            _SET_TOTAL,
            [(n, t.count, t.amount_msat, t.fee_msat, t.last_event_id) for n, t in touched.items()],
        )

    async def record_channel(self, event: ChannelEvent) -> None:
        """Remember a channel's identity and its open or close time."""
        if not event.chan_id:
            return
        closed = float(event.time) if isinstance(event, ChannelClosed) else None
        opened = float(event.time) if event.type == "channel.opened" else None
        await self._store.execute(
            _UPSERT_CHANNEL,
            (event.chan_id, event.channel_point, event.remote_pubkey, "", event.capacity_sat, opened, closed),
        )

    async def sample(self, snapshot: NodeSnapshot) -> None:
        """Write one balance sample per channel of the snapshot, and what it says of each
        channel's identity."""
        when = snapshot.taken_at
        await self._store.executemany(
            "INSERT OR IGNORE INTO metrics_channel_samples "
            "(chan_id, time, capacity_sat, local_sat, remote_sat, active) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (c.chan_id, when, c.capacity_sat, c.local_balance_sat, c.remote_balance_sat, int(c.active))
                for c in snapshot.channels
            ],
        )
        await self._store.executemany(
            _UPSERT_CHANNEL,
            [
                (c.chan_id, c.channel_point, c.peer_pubkey, c.peer_alias, c.capacity_sat, None, None)
                for c in snapshot.channels
            ],
        )

    async def prune_samples(self, before: float) -> None:
        """Drop balance samples older than ``before`` (unix seconds)."""
        await self._store.execute("DELETE FROM metrics_channel_samples WHERE time < ?", (before,))
