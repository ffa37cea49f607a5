"""The append-only event journal and the durable cursor of each plugin.

Stream readers append events together with their stream's resume position in one
transaction; plugins read after their cursor. Recent events are also kept decoded in
memory, so workers that keep up never touch the database to read.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import sqlite3
from collections import OrderedDict, deque
from collections.abc import Collection, Mapping, Sequence

import anyio
import msgspec

from .events import Event, decode_event, encode_event
from .store import Migration, Store

__all__ = ["Journal"]


def _key_digest(key: str) -> bytes:
    """What the journal stores of an event's ``dedupe_key()``: 16 bytes of BLAKE2b.

    A quarter of the space of the keys themselves, so far more of the index stays in the
    page cache and each commit writes fewer pages; two keys share a digest with odds of
    about 2^-128 per pair."""
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


def _digest(key: str, order: int) -> bytes:
    """The digest the journal stores for a dedupe key and the event's ``dedupe_order()``.

    An event with an order gets that number (8 bytes, big-endian) followed by 8 bytes of
    BLAKE2b of its key: the digests of a burst then sit side by side at the end of the
    index, instead of one per page all over it. Keys of the same order share a digest
    with odds of about 2^-64 per pair, and an invoice has a handful of keys. A plain
    digest (order 0) matches one of these with odds of about 2^-128."""
    if order <= 0:
        return _key_digest(key)
    return order.to_bytes(8, "big") + hashlib.blake2b(key.encode(), digest_size=8).digest()


def _key_digests(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE journal_key_digests (digest BLOB PRIMARY KEY) WITHOUT ROWID")
    rows = conn.execute("SELECT key FROM journal_keys")
    while batch := rows.fetchmany(10_000):
        conn.executemany(
            "INSERT OR IGNORE INTO journal_key_digests(digest) VALUES (?)",
            [(_key_digest(k),) for (k,) in batch],
        )
    conn.execute("DROP TABLE journal_keys")


def _ordered_digests(conn: sqlite3.Connection) -> None:
    """Journaled events that have a ``dedupe_order()`` get their digest in the new form.
    At this version only invoice events have one, so only they are decoded."""
    rows = conn.execute("SELECT id, body FROM journal WHERE type LIKE 'invoice.%'")
    while batch := rows.fetchmany(10_000):
        plain: list[tuple[bytes]] = []
        ordered: list[tuple[bytes]] = []
        for event_id, body in batch:
            event = decode_event(body, event_id)
            key, order = event.dedupe_key(), event.dedupe_order()
            if key is None or order <= 0:
                continue
            plain.append((_key_digest(key),))
            ordered.append((_digest(key, order),))
        conn.executemany("DELETE FROM journal_key_digests WHERE digest = ?", plain)
        conn.executemany("INSERT OR IGNORE INTO journal_key_digests(digest) VALUES (?)", ordered)


MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE journal (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            type TEXT NOT NULL,
            time REAL NOT NULL,
            body BLOB NOT NULL
        );
        CREATE TABLE journal_keys (key TEXT PRIMARY KEY) WITHOUT ROWID;
        CREATE TABLE journal_positions (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE journal_cursors (plugin TEXT PRIMARY KEY, position INTEGER NOT NULL);
        CREATE TABLE journal_dead_letters (
            plugin TEXT NOT NULL,
            event_id INTEGER NOT NULL,
            error TEXT NOT NULL,
            time REAL NOT NULL,
            PRIMARY KEY (plugin, event_id)
        );
        """,
    ),
    Migration(2, _key_digests),
    Migration(3, _ordered_digests),
]

# How many recent events stay decoded in memory for workers that keep up (a page of
# 200 invoices is up to 400 events). Every decoded event pins allocator memory while
# cached: at 2,048 the daemon stayed about 2 MB larger after a first sync of 40,000
# invoices than at 1,024, for no speed; at 512 a worker a burst leaves behind reads
# from the database sooner, and the no-op pipeline ran slower.
CACHE_SIZE = 1_024
# Workers that lag (a catch-up) read the same stretch of the journal one after another:
# the last few stretches read from the database stay decoded until they catch up.
CHUNKS = 4


class Journal:
    """The event journal (``daemon.journal`` for plugins)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: deque[Event] = deque(maxlen=CACHE_SIZE)
        self._cache_ids: deque[int] = deque(maxlen=CACHE_SIZE)
        self._chunks: OrderedDict[int, tuple[list[int], list[Event]]] = OrderedDict()
        self._positions: dict[str, int] = {}
        self._cursors: dict[str, int] = {}
        self._new = asyncio.Event()
        self.last_id = 0
        self.appended = 0
        self.duplicates = 0

    def open(self) -> None:
        """Apply the journal's migrations, then :meth:`load` (at start)."""
        self._store.migrate("journal", MIGRATIONS)
        self.load()

    def load(self) -> None:
        """Load positions, cursors and the last id from a migrated journal (at start)."""
        rows = self._store.read_sync("SELECT name, value FROM journal_positions")
        self._positions = {r["name"]: r["value"] for r in rows}
        rows = self._store.read_sync("SELECT plugin, position FROM journal_cursors")
        self._cursors = {r["plugin"]: r["position"] for r in rows}
        row = self._store.read_sync("SELECT COALESCE(MAX(id), 0) AS last FROM journal")
        self.last_id = row[0]["last"]

    # ------------------------------------------------------------ writing

    async def append(self, events: Sequence[Event], positions: Mapping[str, int] | None = None) -> list[int]:
        """Journal events and the stream positions they advance, in one transaction.

        :return: the journal id of each event, 0 for an event dropped because an event
            with the same ``dedupe_key()`` was journaled before.
        """
        events = list(events)
        positions = dict(positions or {})
        # Digests and bodies do not depend on the database: they are worked out here,
        # while the writer commits what came before; the writer only looks duplicates
        # up, numbers the events and inserts them.
        keys = [
            None if (key := ev.dedupe_key()) is None else _digest(key, ev.dedupe_order()) for ev in events
        ]
        bodies = [encode_event(ev) for ev in events]

        def unit(conn: sqlite3.Connection) -> list[int]:
            seen = _known_digests(conn, {k for k in keys if k is not None})
            next_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM journal").fetchone()[0]
            ids: list[int] = []
            key_rows: list[tuple[bytes]] = []
            rows: list[tuple[int, str, float, bytes]] = []
            for ev, key, body in zip(events, keys, bodies, strict=True):
                if key is not None:
                    if key in seen:
                        ids.append(0)
                        continue
                    seen.add(key)
                    key_rows.append((key,))
                next_id += 1
                rows.append((next_id, ev.type, ev.time, body))
                ids.append(next_id)
            conn.executemany("INSERT INTO journal_key_digests(digest) VALUES (?)", key_rows)
            conn.executemany("INSERT INTO journal(id, type, time, body) VALUES (?, ?, ?, ?)", rows)
            if positions:
                conn.executemany(
                    "INSERT INTO journal_positions(name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    positions.items(),
                )
            return ids

        ids = await self._store.write("journal", unit, on_commit=lambda ids: self._committed(events, ids))
        self._positions.update(positions)
        return ids

    def _committed(self, events: list[Event], ids: list[int]) -> None:
        # Runs on the event loop in commit order, so the cache stays sorted by id.
        fresh = [msgspec.structs.replace(ev, id=i) for ev, i in zip(events, ids, strict=True) if i]
        self.duplicates += len(ids) - len(fresh)
        if not fresh:
            return
        for ev in fresh:
            self._cache.append(ev)
            self._cache_ids.append(ev.id)
        self.last_id = fresh[-1].id
        self.appended += len(fresh)
        self._new.set()
        self._new = asyncio.Event()

    def position(self, name: str) -> int | None:
        """The last stored resume position of a stream, or None if never stored."""
        return self._positions.get(name)

    # ------------------------------------------------------------ reading

    async def read(self, after: int, limit: int = 500, types: Collection[str] | None = None) -> list[Event]:
        """Events with an id greater than ``after``, oldest first, at most ``limit``.

        :param types: only events whose type is in this collection (others are skipped
            and do not count towards ``limit``).
        """
        if after >= self.last_id:
            return []
        if self._cache_ids and self._cache_ids[0] <= after + 1:
            self._chunks.clear()
            start = bisect.bisect_right(self._cache_ids, after)
            out: list[Event] = []
            for i in range(start, len(self._cache)):
                ev = self._cache[i]
                if types is None or ev.type in types:
                    out.append(ev)
                    if len(out) >= limit:
                        break
            return out
        return await self._read_db(after, limit, types)

    async def _read_db(self, after: int, limit: int, types: Collection[str] | None) -> list[Event]:
        if types is None:
            for ids, events in self._chunks.values():
                if ids[0] <= after + 1 <= ids[-1]:
                    start = bisect.bisect_right(ids, after)
                    return events[start : start + limit]
        events = await self._query_db(after, limit, types)
        if types is None and events:
            self._chunks[events[0].id] = ([e.id for e in events], events)
            while len(self._chunks) > CHUNKS:
                self._chunks.popitem(last=False)
        return events

    async def _query_db(self, after: int, limit: int, types: Collection[str] | None) -> list[Event]:
        def query(conn: sqlite3.Connection) -> list[Event]:
            if types is None:
                rows = conn.execute(
                    "SELECT id, body FROM journal WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
                ).fetchall()
            else:
                marks = ",".join("?" * len(types))
                rows = conn.execute(
                    f"SELECT id, body FROM journal WHERE id > ? AND type IN ({marks}) ORDER BY id LIMIT ?",
                    (after, *types, limit),
                ).fetchall()
            return [decode_event(body, event_id) for event_id, body in rows]

        return await self._store.read(query)

    async def wait(self, after: int, timeout: float | None = None) -> bool:
        """Wait until an event with an id greater than ``after`` exists.

        :return: True if one exists, False if ``timeout`` seconds passed first.
        """
        if self.last_id > after:
            return True
        new = self._new
        if timeout is None:
            await new.wait()
            return True
        with anyio.move_on_after(timeout):
            await new.wait()
            return True
        return self.last_id > after

    def release_memory(self) -> None:
        """Drop the decoded events kept for reading; the database still has them.

        Events appended from now on are cached again, so a worker that has caught up
        keeps reading from memory.
        """
        self._cache.clear()
        self._cache_ids.clear()
        self._chunks.clear()

    # ------------------------------------------------------------ cursors

    def cursor(self, plugin: str) -> int | None:
        """The plugin's durable cursor (id of the last event it finished), or None."""
        return self._cursors.get(plugin)

    async def save_cursor(self, plugin: str, position: int) -> None:
        """Queue the cursor update; it commits after every write queued before it."""
        self._cursors[plugin] = position
        await self._store.execute(
            "journal",
            "INSERT INTO journal_cursors(plugin, position) VALUES (?, ?) "
            "ON CONFLICT(plugin) DO UPDATE SET position = excluded.position",
            (plugin, position),
        )

    async def dead_letter(self, plugin: str, event_id: int, error: str, when: float) -> None:
        await self._store.execute(
            "journal",
            "INSERT OR REPLACE INTO journal_dead_letters(plugin, event_id, error, time) VALUES (?, ?, ?, ?)",
            (plugin, event_id, error, when),
        )

    async def count(self) -> int:
        def query(conn: sqlite3.Connection) -> int:
            return conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0]

        return await self._store.read(query)


# Digests are looked up _PROBE at a time, each group padded with a repeat up to the next of
# _PROBE_SIZES, so a few statements serve any number of keys (an IN list compiles a
# statement per length), and a live append of a few events binds and probes a few
# values, not _PROBE: 19 digests against 300,000 took 19 us padded to 32, 100 us to 250.
_PROBE_SIZES = (8, 32, 128, 250)
_PROBE = _PROBE_SIZES[-1]
_KNOWN_DIGESTS = {
    n: f"SELECT digest FROM journal_key_digests WHERE digest IN ({', '.join('?' * n)})" for n in _PROBE_SIZES
}


def _known_digests(conn: sqlite3.Connection, digests: set[bytes]) -> set[bytes]:
    """Which of ``digests`` are journaled already."""
    found: set[bytes] = set()
    todo = list(digests)
    for start in range(0, len(todo), _PROBE):
        group = todo[start : start + _PROBE]
        size = next(n for n in _PROBE_SIZES if n >= len(group))
        group += group[:1] * (size - len(group))
        found.update(row[0] for row in conn.execute(_KNOWN_DIGESTS[size], group))
    return found
