"""The expiry tracker's open invoices, kept in flat arrays.

Each open invoice is a slot: its 32-byte payment hash in one ``bytearray``, a fixed
record (add index, due time, value, creation date, expiry, state, attempts, flags and
where its memo lies) in another, and its memo in a third. An open-addressing table of
slot numbers (an ``array``) finds a slot by hash. No Python object is made per
invoice, so tens of thousands of open invoices cost a few large allocations that are
given back whole when the set is rebuilt at its new size, instead of hundreds of
thousands of small objects whose arenas stay pinned by whatever outlives a burst.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["HOLD", "KEY_SIZE", "OpenInvoice", "OpenSet"]

KEY_SIZE = 32
"""Bytes in a payment hash: the only key length the set holds."""

HOLD, FOLLOWED, KEYSEND, PRIVATE = 1, 2, 4, 8

# add_index, due, value_msat, creation_date, expiry, state, attempts, flags, memo
# offset, memo length. A free slot has add index 0 (LND's add indexes start at 1).
_RECORD = struct.Struct("<qdqqqBBBIH")
_HEAD = struct.Struct("<qd")  # add_index, due: what timers, the floor and rebuilds read
_FLAGS_AT = 42
_EMPTY, _DELETED = -1, -2
_MIN_TABLE = 64
_MAX_MEMO = 0xFFFF


@dataclass(slots=True)
class OpenInvoice:
    """One open invoice, decoded: when to look at it next, and what describes it
    should LND delete it."""

    add_index: int
    due: float
    value_msat: int
    creation_date: int
    expiry: int
    state: int
    memo: str
    hold: bool = False
    followed: bool = False
    is_keysend: bool = False
    private: bool = False
    attempts: int = 0

    @property
    def expires_at(self) -> int:
        return self.creation_date + self.expiry

    @property
    def flags(self) -> int:
        return (
            (HOLD if self.hold else 0)
            | (FOLLOWED if self.followed else 0)
            | (KEYSEND if self.is_keysend else 0)
            | (PRIVATE if self.private else 0)
        )


class OpenSet:
    """Open invoices by payment hash (32 bytes), each in a numbered slot.

    Slots are reused once freed; ``rebuilt`` packs the live ones into a set sized for
    them (the slot numbers change).
    """

    def __init__(self) -> None:
        self._keys = bytearray()
        self._records = bytearray()
        self._memos = bytearray()
        self._memo_dead = 0
        self._free = array("i")
        self._table = array("i", [_EMPTY]) * _MIN_TABLE
        self._used = 0  # table entries that are slots or deleted marks
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes | bytearray) and self.slot(key) >= 0

    @property
    def capacity(self) -> int:
        """Slots allocated, live or free."""
        return len(self._keys) // KEY_SIZE

    # ------------------------------------------------------------ lookups

    def _probe(self, key: bytes | bytearray) -> int:
        """The table position holding ``key``'s slot, or -1."""
        if len(key) != KEY_SIZE:
            return -1
        table, keys = self._table, self._keys
        mask = len(table) - 1
        i = hash(bytes(key)) & mask
        while True:
            slot = table[i]
            if slot == _EMPTY:
                return -1
            if slot >= 0:
                at = slot * KEY_SIZE
                if keys[at : at + KEY_SIZE] == key:
                    return i
            i = (i + 1) & mask

    def slot(self, key: bytes | bytearray) -> int:
        """The slot of ``key``, or -1 when it is not open."""
        i = self._probe(key)
        return -1 if i < 0 else self._table[i]

    def key(self, slot: int) -> bytes:
        at = slot * KEY_SIZE
        return bytes(self._keys[at : at + KEY_SIZE])

    def head(self, slot: int) -> tuple[int, float]:
        """(add index, due) of a slot; the add index is 0 for a free slot."""
        return _HEAD.unpack_from(self._records, slot * _RECORD.size)

    def flags(self, slot: int) -> int:
        return self._records[slot * _RECORD.size + _FLAGS_AT]

    def get(self, key: bytes) -> OpenInvoice | None:
        slot = self.slot(key)
        return None if slot < 0 else self.at(slot)

    def at(self, slot: int) -> OpenInvoice:
        """The invoice in a live slot, decoded."""
        add_index, due, value, created, expiry, state, attempts, flags, memo_at, memo_len = (
            _RECORD.unpack_from(self._records, slot * _RECORD.size)
        )
        return OpenInvoice(
            add_index,
            due,
            value,
            created,
            expiry,
            state,
            self._memos[memo_at : memo_at + memo_len].decode(errors="replace"),
            hold=bool(flags & HOLD),
            followed=bool(flags & FOLLOWED),
            is_keysend=bool(flags & KEYSEND),
            private=bool(flags & PRIVATE),
            attempts=attempts,
        )

    def slots(self) -> Iterator[int]:
        """The live slots (the set must not change while they are iterated)."""
        records, size = self._records, _RECORD.size
        for slot in range(self.capacity):
            if _HEAD.unpack_from(records, slot * size)[0]:
                yield slot

    # ------------------------------------------------------------ changes

    def add(self, key: bytes, entry: OpenInvoice) -> int:
        """Store a new invoice (``key`` must not be in the set); returns its slot."""
        if len(key) != KEY_SIZE:
            raise ValueError(f"payment hash must be {KEY_SIZE} bytes, got {len(key)}")
        if entry.add_index < 1:
            raise ValueError(f"add index must be >= 1, got {entry.add_index}")
        if (self._used + 1) * 2 > len(self._table):
            self._rehash(self._live + 1)
        memo = entry.memo.encode()[:_MAX_MEMO]
        memo_at = len(self._memos)
        self._memos += memo
        if self._free:
            slot = self._free.pop()
            self._keys[slot * KEY_SIZE : (slot + 1) * KEY_SIZE] = key
        else:
            slot = self.capacity
            self._keys += key
            self._records += bytes(_RECORD.size)
        self._write(slot, entry, memo_at, len(memo))
        table = self._table
        mask = len(table) - 1
        i = hash(bytes(key)) & mask
        while table[i] >= 0:
            i = (i + 1) & mask
        if table[i] == _EMPTY:
            self._used += 1
        table[i] = slot
        self._live += 1
        return slot

    def update(self, slot: int, entry: OpenInvoice) -> None:
        """Write a live slot's fields back (its memo stays as stored)."""
        _, _, _, _, _, _, _, _, memo_at, memo_len = _RECORD.unpack_from(self._records, slot * _RECORD.size)
        self._write(slot, entry, memo_at, memo_len)

    def _write(self, slot: int, entry: OpenInvoice, memo_at: int, memo_len: int) -> None:
        _RECORD.pack_into(
            self._records,
            slot * _RECORD.size,
            entry.add_index,
            entry.due,
            entry.value_msat,
            entry.creation_date,
            entry.expiry,
            entry.state,
            min(entry.attempts, 255),
            entry.flags,
            memo_at,
            memo_len,
        )

    def remove(self, key: bytes) -> bool:
        """Drop ``key``; False when it was not in the set."""
        i = self._probe(key)
        if i < 0:
            return False
        slot = self._table[i]
        self._table[i] = _DELETED
        record_at = slot * _RECORD.size
        self._memo_dead += _RECORD.unpack_from(self._records, record_at)[9]
        self._records[record_at : record_at + _RECORD.size] = bytes(_RECORD.size)
        self._free.append(slot)
        self._live -= 1
        if not self._live:
            # Nothing open: start the memos over rather than let dead ones pile up.
            self._memos = bytearray()
            self._memo_dead = 0
        return True

    def _rehash(self, live: int) -> None:
        size = _MIN_TABLE
        while size < live * 4:
            size *= 2
        table = array("i", [_EMPTY]) * size
        mask = size - 1
        keys = self._keys
        for slot in self.slots():
            at = slot * KEY_SIZE
            i = hash(bytes(keys[at : at + KEY_SIZE])) & mask
            while table[i] != _EMPTY:
                i = (i + 1) & mask
            table[i] = slot
        self._table = table
        self._used = self._live

    # ------------------------------------------------------------ rebuilding

    def wasteful(self) -> bool:
        """True when free slots, dead memos or the table take far more room than the
        live invoices need: time to ``rebuilt``."""
        capacity = self.capacity
        return (
            capacity > 4 * self._live + 1024
            or self._memo_dead > 2 * (len(self._memos) - self._memo_dead) + 65536
            or len(self._table) > max(_MIN_TABLE, 16 * self._live)
        )

    def rebuilt(self) -> OpenSet:
        """A new set with the live invoices in slots 0, 1, ..., sized for them."""
        fresh = OpenSet()
        records, size = self._records, _RECORD.size
        keys, memos = [], []
        memo_at = 0
        packed = bytearray()
        for slot in self.slots():
            fields = list(_RECORD.unpack_from(records, slot * size))
            start, length = fields[8], fields[9]
            memos.append(self._memos[start : start + length])
            fields[8] = memo_at
            memo_at += length
            packed += _RECORD.pack(*fields)
            at = slot * KEY_SIZE
            keys.append(self._keys[at : at + KEY_SIZE])
        fresh._keys = bytearray().join(keys)
        fresh._records = packed
        fresh._memos = bytearray().join(memos)
        fresh._live = len(keys)
        fresh._rehash(fresh._live)
        return fresh
