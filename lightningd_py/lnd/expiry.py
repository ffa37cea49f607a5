"""Detect invoice expiry and cancellation, which LND never reports on a stream.

LND's invoice stream reports additions and settlements only; it cancels expired
invoices silently and says nothing of cancellations. ``ExpiryTracker`` keeps every
open invoice in memory (about 225 bytes each) with a timer at its expiry time; when
one is due it asks LND (``LookupInvoice``) and journals what happened:
``InvoiceExpired``, ``InvoiceSettled`` or ``InvoiceCanceled`` (from what the tracker
kept of the invoice, if LND has deleted it). A periodic sweep of
``ListInvoices(pending_only)`` catches what the timers cannot (cancellations before
expiry, anything missed), journals ``InvoiceAccepted`` for hold invoices whose HTLCs
are locked in, and hold invoices are followed with ``SubscribeSingleInvoice``.

The tracker also holds the invoice reader's resume state (``add_index``,
``settle_index``) and the ``invoices.open_floor`` position: the lowest add index that
may still be open. Everything below it is closed and journaled, so after a restart
the reader re-reads invoices from the floor to find those closed while the daemon
was away and to rebuild the tracked set.

One tracker lives as long as the daemon; the supervisor passes it to every
``run_streams`` so reconnects keep it.
"""

from __future__ import annotations

import bisect
import heapq
import math
import struct
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import grpc
import structlog

from ..errors import LndError
from ..events import Event, InvoiceCanceled, InvoiceEvent, InvoiceExpired
from . import convert
from .errors import classify
from .reconcile import JournalLike, RecentForwards, StreamSettings, unary
from .rpc import invoices_pb2
from .rpc import lightning_pb2 as ln

__all__ = [
    "ADD_INDEX",
    "OPEN_FLOOR",
    "SETTLE_INDEX",
    "ExpiryTracker",
]

ADD_INDEX = "invoices.add_index"
"""Every invoice with an add index up to this one has its ``InvoiceCreated`` journaled."""
SETTLE_INDEX = "invoices.settle_index"
"""Every invoice with a settle index up to this one has its ``InvoiceSettled`` journaled."""
OPEN_FLOOR = "invoices.open_floor"
"""Every invoice with an add index below this one is closed and its end journaled."""

_log = structlog.get_logger("lightningd_py.lnd.expiry")

# LND cancels an expired invoice on its own timer, a moment after the expiry time;
# until it has, the invoice is looked up again after these delays (seconds).
_RECHECK_DELAYS = (0.5, 1.0, 2.0, 5.0, 15.0, 30.0)
# An ACCEPTED hold invoice stays until it is settled or canceled (by its HTLCs'
# timeout, not the invoice expiry): the sweep follows it; timers re-check it rarely.
_ACCEPTED_RECHECK = 300.0
_LOOKUP_CONCURRENCY = 16
_MAX_FOLLOWERS = 256
_SWEEP_LOOKUPS = 500


# An open invoice is kept as one bytes object (this header, then its memo in UTF-8) under
# its 32-byte hash: two small allocations per invoice, so tens of thousands of open
# invoices cost a few MB, and a burst of them leaves no scattered survivors that keep
# the allocator's arenas from being returned.
_PACKED = struct.Struct("<qdqqqBBB")
# What the timers, the floor and compaction read, without decoding the rest.
_HEAD = struct.Struct("<qd")  # add_index, due
_FLAGS_AT = _PACKED.size - 1
_HOLD, _FOLLOWED, _KEYSEND, _PRIVATE = 1, 2, 4, 8


@dataclass(slots=True)
class _Open:
    """An open invoice: when to look at it next, and what describes it should LND
    delete it."""

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

    def pack(self) -> bytes:
        flags = (
            (_HOLD if self.hold else 0)
            | (_FOLLOWED if self.followed else 0)
            | (_KEYSEND if self.is_keysend else 0)
            | (_PRIVATE if self.private else 0)
        )
        header = _PACKED.pack(
            self.add_index,
            self.due,
            self.value_msat,
            self.creation_date,
            self.expiry,
            self.state,
            min(self.attempts, 255),
            flags,
        )
        return header + self.memo.encode()

    @classmethod
    def unpack(cls, data: bytes) -> _Open:
        add_index, due, value_msat, creation_date, expiry, state, attempts, flags = _PACKED.unpack_from(data)
        return cls(
            add_index,
            due,
            value_msat,
            creation_date,
            expiry,
            state,
            data[_PACKED.size :].decode(),
            hold=bool(flags & _HOLD),
            followed=bool(flags & _FOLLOWED),
            is_keysend=bool(flags & _KEYSEND),
            private=bool(flags & _PRIVATE),
            attempts=attempts,
        )

    def ended(self, payment_hash: bytes, now: float) -> InvoiceEvent:
        """The end of an invoice LND no longer has: canceled before its expiry time,
        else expired."""
        cls = InvoiceCanceled if now < self.expires_at else InvoiceExpired
        return cls(
            time=now,
            payment_hash=payment_hash.hex(),
            memo=self.memo,
            value_msat=self.value_msat,
            creation_date=self.creation_date,
            expiry=self.expiry,
            add_index=self.add_index,
            is_keysend=self.is_keysend,
            private=self.private,
        )


class ExpiryTracker:
    """Open invoices, their expiry times, and the invoice resume positions.

    :param journal: the daemon's journal (what the tracker finds is journaled there).
    :param settings: the ``[lnd]`` settings (``rpc_timeout``, ``invoice_page_size``,
        ``invoice_sweep_interval``).
    :param clock: UTC unix seconds (a parameter so tests can move time).
    """

    def __init__(
        self, journal: JournalLike, settings: StreamSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.journal = journal
        self.settings = settings
        self._clock = clock
        # Open invoices by payment hash (bytes), packed (see _Open).
        self._open: dict[bytes, bytes] = {}
        # Timers: the hashes due within each whole second (the second they are due at
        # or before), and a heap of those seconds. A hash whose invoice closed or was
        # rescheduled stays in its second's list until that second is reached.
        self._due: dict[int, list[bytes]] = {}
        self._seconds: list[int] = []
        self._timer_refs = 0
        # Tracked add indexes, ascending, beside their hashes; the first still open is
        # the floor. Entries of closed invoices are dropped from the front as the floor
        # passes them, and from the rest when the tracker compacts.
        self._adds = array("q")
        self._add_hashes: list[bytes] = []
        self._to_follow: set[bytes] = set()
        self._gone: set[bytes] = set()
        self._wake: anyio.Event | None = None
        self._following = 0
        self._next_due = float("inf")
        self.add_index = 0
        self.settle_index = 0
        self.loaded = False
        """True once the tracked set reflects LND (after the reader's first catch-up)."""
        self.canceled: set[str] | None = None
        """Hashes journaled as ``InvoiceCanceled`` (explicit cancellations, so few);
        loaded from the journal the first time it is needed, then kept up to date."""
        self.recent_forwards = RecentForwards()
        """Settled forwards recently journaled from the HTLC stream; kept here because
        this object outlives connections and reconciliation after a reconnect needs
        them to recognise those forwards in ForwardingHistory."""

    # ------------------------------------------------------------ state

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, payment_hash: object) -> bool:
        if not isinstance(payment_hash, str):
            return False
        try:
            return bytes.fromhex(payment_hash) in self._open
        except ValueError:
            return False

    def _get(self, key: bytes) -> _Open | None:
        data = self._open.get(key)
        return None if data is None else _Open.unpack(data)

    def _put(self, key: bytes, entry: _Open) -> None:
        self._open[key] = entry.pack()

    def load_positions(self) -> int:
        """Read the stored invoice positions; returns the add index to re-read from
        (exclusive): the floor's predecessor, or the stored add index, whichever is
        lower."""
        journal = self.journal
        self.add_index = max(self.add_index, journal.position(ADD_INDEX) or 0)
        self.settle_index = max(self.settle_index, journal.position(SETTLE_INDEX) or 0)
        stored_floor = journal.position(OPEN_FLOOR)
        floor = self.floor() if self._open else (stored_floor if stored_floor is not None else 1)
        return max(0, min(floor - 1, self.add_index))

    def track(self, inv: Any) -> None:
        """Track an OPEN or ACCEPTED ``lnrpc.Invoice`` until it is closed."""
        key = bytes(inv.r_hash)
        data = self._open.get(key)
        if data is not None:
            entry = _Open.unpack(data)
            entry.state = inv.state
            self._open[key] = entry.pack()
            return
        expires_at = convert.invoice_expires_at(inv)
        entry = _Open(
            inv.add_index,
            float(expires_at),
            inv.value_msat,
            inv.creation_date,
            inv.expiry,
            inv.state,
            inv.memo,
            hold=convert.invoice_is_hold(inv),
            is_keysend=inv.is_keysend,
            private=inv.private,
        )
        self._open[key] = entry.pack()
        adds = self._adds
        if not adds or entry.add_index >= adds[-1]:
            adds.append(entry.add_index)
            self._add_hashes.append(key)
        else:
            at = bisect.bisect_right(adds, entry.add_index)
            adds.insert(at, entry.add_index)
            self._add_hashes.insert(at, key)
        self._schedule(key, entry.due)
        if entry.hold:
            self._to_follow.add(key)
            if self._wake is not None:
                self._wake.set()

    def forget(self, payment_hash: str) -> None:
        """Stop tracking (its end has been journaled)."""
        key = bytes.fromhex(payment_hash)
        if self._open.pop(key, None) is not None:
            self._to_follow.discard(key)
            self._gone.discard(key)
            # Timers and add indexes drop closed invoices lazily; rebuild them before
            # the stale entries of a long burst of settlements pile up.
            limit = 4 * len(self._open) + 4096
            if self._timer_refs > limit or len(self._add_hashes) > limit:
                self._compact()

    def _compact(self) -> None:
        # A dict keeps the table it grew to for a burst however many entries remain: a
        # copy is sized for what is left.
        self._open = dict(self._open)
        entries = sorted((*_HEAD.unpack_from(data), key) for key, data in self._open.items())
        self._adds = array("q", [add_index for add_index, _, _ in entries])
        self._add_hashes = [key for _, _, key in entries]
        # Rebuilt in place: the timer loop may hold a reference to them.
        self._due.clear()
        self._seconds.clear()
        self._timer_refs = 0
        for _, due, key in entries:
            self._schedule(key, due, wake=False)
        self._next_due = float(self._seconds[0]) if self._seconds else float("inf")

    def note_canceled(self, events: Iterable[Event]) -> None:
        """Remember the invoices just journaled as canceled (see ``canceled``)."""
        if self.canceled is not None:
            self.canceled.update(e.payment_hash for e in events if isinstance(e, InvoiceCanceled))

    def floor(self) -> int:
        """``invoices.open_floor``: the lowest add index still tracked, else the next
        add index. Computed before closed invoices are forgotten, so it may lag one
        batch behind but is never too high."""
        adds, hashes, tracked = self._adds, self._add_hashes, self._open
        passed = 0
        for add_index, key in zip(adds, hashes, strict=True):
            data = tracked.get(key)
            if data is not None and _HEAD.unpack_from(data)[0] == add_index:
                break
            passed += 1
        if passed:
            del adds[:passed]
            del hashes[:passed]
        return adds[0] if adds else self.add_index + 1

    def positions(self) -> dict[str, int]:
        """The invoice positions to store with an append."""
        return {ADD_INDEX: self.add_index, SETTLE_INDEX: self.settle_index, OPEN_FLOOR: self.floor()}

    def _schedule(self, key: bytes, due: float, *, wake: bool = True) -> None:
        second = math.ceil(due)
        keys = self._due.get(second)
        if keys is None:
            keys = self._due[second] = []
            heapq.heappush(self._seconds, second)
        keys.append(key)
        self._timer_refs += 1
        if wake and second < self._next_due:
            self._next_due = second
            if self._wake is not None:
                self._wake.set()

    # ------------------------------------------------------------ running

    async def run(self, stubs: Any) -> None:
        """Expiry timers, the periodic sweep and the hold-invoice followers, until
        cancelled or LND fails (``LndError``). Start it once the reader has loaded the
        tracked set."""
        self._wake = anyio.Event()
        # Followers of an earlier connection are gone (even those cancelled before
        # they ran): follow every hold invoice again.
        self._following = 0
        for key, data in self._open.items():
            if data[_FLAGS_AT] & _HOLD:
                self._to_follow.add(key)
        for key in self._to_follow:
            entry = self._get(key)
            if entry is not None:
                entry.followed = False
                self._put(key, entry)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._sweeps, stubs)
                await self._timers(stubs, tg)
        finally:
            self._wake = None

    async def _timers(self, stubs: Any, tg: anyio.abc.TaskGroup) -> None:
        limiter = anyio.CapacityLimiter(_LOOKUP_CONCURRENCY)
        while True:
            if self._to_follow:
                self._start_followers(stubs, tg)
            now = self._clock()
            due: dict[bytes, None] = {}
            seconds = self._seconds
            while seconds and seconds[0] <= now:
                keys = self._due.pop(heapq.heappop(seconds))
                self._timer_refs -= len(keys)
                for key in keys:
                    # Closed, or rescheduled to a later second.
                    data = self._open.get(key)
                    if data is not None and _HEAD.unpack_from(data)[1] <= now:
                        due[key] = None
            self._next_due = float(seconds[0]) if seconds else float("inf")
            if due:
                await self._check(stubs, list(due), limiter)
                continue
            assert self._wake is not None
            delay = max(0.0, self._next_due - now)
            with anyio.move_on_after(min(delay, 3600.0)):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _lookup(self, stubs: Any, r_hash: bytes) -> Any | None:
        """The invoice as LND has it now, or None when LND no longer has it (deleted,
        e.g. by ``gc-canceled-invoices-on-the-fly``)."""
        try:
            return await unary(
                stubs.lightning.LookupInvoice, ln.PaymentHash(r_hash=r_hash), self.settings.rpc_timeout
            )
        except LndError as exc:
            if exc.kind == "not_found":
                return None
            raise

    async def _check(self, stubs: Any, keys: list[bytes], limiter: anyio.CapacityLimiter) -> None:
        """Look the given invoices up and journal the ends found, in one append."""
        found: dict[bytes, Any] = {}

        async def one(key: bytes) -> None:
            if key not in self._open:
                return
            async with limiter:
                found[key] = await self._lookup(stubs, key)

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(one, key)
        await self._resolve(found)

    async def _resolve(self, found: dict[bytes, Any]) -> None:
        """Journal what the looked-up invoices say; reschedule those still open."""
        now = self._clock()
        events: list[InvoiceEvent] = []
        closed: list[str] = []
        for key, inv in found.items():
            entry = self._get(key)
            if entry is None:
                continue
            if inv is None:
                # Gone from LND: canceled (and deleted) or expired.
                events.append(entry.ended(key, now))
                closed.append(key.hex())
                continue
            state = inv.state
            if state == convert.SETTLED or state == convert.CANCELED:
                event = convert.invoice_state_event(inv, now)
                assert event is not None
                events.append(event)
                closed.append(key.hex())
                continue
            if state == convert.ACCEPTED:
                if entry.state != convert.ACCEPTED:
                    events.append(convert.invoice_state_event(inv, now))  # type: ignore[arg-type]
                entry.state = state
                entry.due = now + _ACCEPTED_RECHECK
            else:
                # Still OPEN: before its expiry time (expiry extended?) wait for it,
                # after it LND is about to cancel it.
                expires = float(entry.expires_at)
                if now < expires:
                    entry.due = expires
                else:
                    entry.due = now + _RECHECK_DELAYS[min(entry.attempts, len(_RECHECK_DELAYS) - 1)]
                    entry.attempts += 1
            self._put(key, entry)
            self._schedule(key, entry.due)
        if events:
            positions = {OPEN_FLOOR: self.floor()}
            await self.journal.append(events, positions)
            self.note_canceled(events)
        for payment_hash in closed:
            self.forget(payment_hash)

    # ------------------------------------------------------------ sweep

    async def _sweeps(self, stubs: Any) -> None:
        limiter = anyio.CapacityLimiter(_LOOKUP_CONCURRENCY)
        while True:
            await anyio.sleep(self.settings.invoice_sweep_interval)
            await self.sweep(stubs, limiter)

    async def sweep(self, stubs: Any, limiter: anyio.CapacityLimiter | None = None) -> None:
        """Compare ``ListInvoices(pending_only)`` with the tracked set, up to the invoice
        reader's add index: invoices that left the pending list are looked up and their
        end journaled; ACCEPTED ones journal ``InvoiceAccepted``; pending ones never seen
        are tracked.

        Invoices added after the reader's add index are the reader's to journal and
        track (the stream delivers every addition after it): in a burst LND runs tens of
        thousands of invoices ahead of the reader, and the sweep would otherwise hold
        and journal them all at once. Pages are handled one at a time; only the pending
        hashes are kept across them."""
        settings = self.settings
        reached = self.add_index
        pending: set[bytes] = set()
        offset = max(0, self.floor() - 1)
        while offset < reached:
            request = ln.ListInvoiceRequest(
                pending_only=True, index_offset=offset, num_max_invoices=settings.invoice_page_size
            )
            page = await unary(stubs.lightning.ListInvoices, request, settings.rpc_timeout)
            now = self._clock()
            events: list[InvoiceEvent] = []
            for inv in page.invoices:
                if inv.add_index > reached:
                    break
                key = bytes(inv.r_hash)
                pending.add(key)
                entry = self._get(key)
                if entry is None:
                    # Its creation is journaled: the reader has passed its add index.
                    self.track(inv)
                    entry = self._get(key)
                    assert entry is not None
                    if inv.state == convert.ACCEPTED:
                        entry.state = convert.OPEN  # so the ACCEPTED branch below journals it
                if inv.state == convert.ACCEPTED and entry.state != convert.ACCEPTED:
                    entry.state = convert.ACCEPTED
                    self._put(key, entry)
                    events.append(convert.invoice_state_event(inv, now))  # type: ignore[arg-type]
            if events:
                await self.journal.append(events, {OPEN_FLOOR: self.floor()})
            if not page.invoices or page.last_index_offset <= offset:
                break
            offset = page.last_index_offset
        # An invoice that left the pending list was settled (the stream reports that;
        # the reader may just be behind), canceled or expired. Only those missing in
        # two sweeps in a row are looked up, at most _SWEEP_LOOKUPS per sweep, so a
        # burst of settlements does not turn into a burst of lookups.
        gone = {
            key
            for key, data in self._open.items()
            if key not in pending and _HEAD.unpack_from(data)[0] <= reached
        }
        suspects = [h for h in gone if h in self._gone][:_SWEEP_LOOKUPS]
        self._gone = gone
        if suspects:
            await self._check(stubs, suspects, limiter or anyio.CapacityLimiter(_LOOKUP_CONCURRENCY))

    # ------------------------------------------------------------ hold invoices

    def _start_followers(self, stubs: Any, tg: anyio.abc.TaskGroup) -> None:
        while self._to_follow and self._following < _MAX_FOLLOWERS:
            # Beyond the limit the sweep and the timers still cover hold invoices.
            key = self._to_follow.pop()
            entry = self._get(key)
            if entry is None or entry.followed:
                continue
            entry.followed = True
            self._put(key, entry)
            self._following += 1
            tg.start_soon(self._follow, stubs, key)

    async def _follow(self, stubs: Any, key: bytes) -> None:
        """Follow one hold invoice with SubscribeSingleInvoice until it ends."""
        call = None
        try:
            if key not in self._open:
                return
            request = invoices_pb2.SubscribeSingleInvoiceRequest(r_hash=key)
            call = stubs.invoices.SubscribeSingleInvoice(request)
            async for inv in call:
                entry = self._get(key)
                if entry is None:
                    return
                state = inv.state
                if state == convert.OPEN:
                    continue
                if state == convert.ACCEPTED and entry.state == convert.ACCEPTED:
                    continue
                await self._resolve({key: inv})
                if state != convert.ACCEPTED:
                    return
        except (grpc.RpcError, grpc.aio.UsageError) as exc:
            # A lost connection ends the main streams too; the follower just stops
            # (timers and sweeps still cover the invoice).
            _log.debug("hold invoice follower stopped", payment_hash=key.hex(), error=str(classify(exc)))
        finally:
            if call is not None:
                call.cancel()
            self._following -= 1
            entry = self._get(key)
            if entry is not None:
                entry.followed = False
                self._put(key, entry)
