"""Detect invoice expiry and cancellation, which LND never reports on a stream.

LND's invoice stream reports additions and settlements only; it cancels expired
invoices silently and says nothing of cancellations. ``ExpiryTracker`` keeps every
open invoice in memory (about 110 bytes each plus its memo, in the flat arrays of
``OpenSet``) with a timer at its expiry time; when one is due it asks LND
(``LookupInvoice``) and journals what happened: ``InvoiceExpired``,
``InvoiceSettled`` or ``InvoiceCanceled`` (from what the tracker kept of the
invoice, if LND has deleted it). A periodic sweep of ``ListInvoices(pending_only)``
catches what the timers cannot (cancellations before expiry, anything missed),
journals ``InvoiceAccepted`` for hold invoices whose HTLCs are locked in, and hold
invoices are followed with ``SubscribeSingleInvoice``.

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
import time
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import grpc
import structlog

from ..errors import LndError
from ..events import Event, InvoiceCanceled, InvoiceEvent, InvoiceExpired
from . import convert
from .errors import classify
from .openset import HOLD, OpenInvoice, OpenSet
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


def _ended(entry: OpenInvoice, payment_hash: bytes, now: float) -> InvoiceEvent:
    """The end of an invoice LND no longer has: canceled before its expiry time, else
    expired."""
    cls = InvoiceCanceled if now < entry.expires_at else InvoiceExpired
    return cls(
        time=now,
        payment_hash=payment_hash.hex(),
        memo=entry.memo,
        value_msat=entry.value_msat,
        creation_date=entry.creation_date,
        expiry=entry.expiry,
        add_index=entry.add_index,
        is_keysend=entry.is_keysend,
        private=entry.private,
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
        self._open = OpenSet()
        # Timers: the slots due within each whole second (the second they are due at or
        # before), and a heap of those seconds. A slot whose invoice closed or was
        # rescheduled stays in its second's array until that second is reached; should
        # the slot hold another invoice by then, that one is checked only if it is due.
        self._due: dict[int, array[int]] = {}
        self._seconds: list[int] = []
        self._timer_refs = 0
        # Tracked add indexes, ascending, beside their slots; the first still open is
        # the floor. Entries of closed invoices are dropped from the front as the floor
        # passes them, and from the rest when the tracker compacts.
        self._adds = array("q")
        self._add_slots = array("i")
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

    def _get(self, key: bytes) -> OpenInvoice | None:
        return self._open.get(key)

    def _put(self, key: bytes, entry: OpenInvoice) -> None:
        slot = self._open.slot(key)
        if slot >= 0:
            self._open.update(slot, entry)

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
        tracked = self._open
        slot = tracked.slot(key)
        if slot >= 0:
            entry = tracked.at(slot)
            entry.state = inv.state
            tracked.update(slot, entry)
            return
        if len(key) != 32:
            _log.warning("invoice with a malformed payment hash not tracked", r_hash=key.hex())
            return
        entry = OpenInvoice(
            inv.add_index,
            float(convert.invoice_expires_at(inv)),
            inv.value_msat,
            inv.creation_date,
            inv.expiry,
            inv.state,
            inv.memo,
            hold=convert.invoice_is_hold(inv),
            is_keysend=inv.is_keysend,
            private=inv.private,
        )
        slot = tracked.add(key, entry)
        adds = self._adds
        if not adds or entry.add_index >= adds[-1]:
            adds.append(entry.add_index)
            self._add_slots.append(slot)
        else:
            at = bisect.bisect_right(adds, entry.add_index)
            adds.insert(at, entry.add_index)
            self._add_slots.insert(at, slot)
        self._schedule(slot, entry.due)
        if entry.hold:
            self._to_follow.add(key)
            if self._wake is not None:
                self._wake.set()

    def forget(self, payment_hash: str) -> None:
        """Stop tracking (its end has been journaled)."""
        key = bytes.fromhex(payment_hash)
        if self._open.remove(key):
            self._to_follow.discard(key)
            gone = self._gone
            if gone:
                gone.discard(key)
                if not gone:
                    # A set keeps the table it grew to however many keys are
                    # discarded: one sized for a burst's open invoices is megabytes.
                    self._gone = set()
            # Timers and add indexes drop closed invoices lazily; rebuild them before
            # the stale entries of a long burst of settlements pile up, and the open set
            # once it is far larger than what it holds.
            limit = 4 * len(self._open) + 4096
            if self._timer_refs > limit or len(self._add_slots) > limit or self._open.wasteful():
                self._compact()

    def _compact(self) -> None:
        tracked = self._open = self._open.rebuilt()
        # Copies are sized for what the sets hold now, not for what they once held.
        self._to_follow = set(self._to_follow)
        self._gone = set(self._gone)
        entries = sorted((*tracked.head(slot), slot) for slot in tracked.slots())
        self._adds = array("q", [add_index for add_index, _, _ in entries])
        self._add_slots = array("i", [slot for _, _, slot in entries])
        # Rebuilt in place: the timer loop may hold a reference to them.
        self._due.clear()
        self._seconds.clear()
        self._timer_refs = 0
        for _, due, slot in entries:
            self._schedule(slot, due, wake=False)
        self._next_due = float(self._seconds[0]) if self._seconds else float("inf")

    def note_canceled(self, events: Iterable[Event]) -> None:
        """Remember the invoices just journaled as canceled (see ``canceled``)."""
        if self.canceled is not None:
            self.canceled.update(e.payment_hash for e in events if isinstance(e, InvoiceCanceled))

    def floor(self) -> int:
        """``invoices.open_floor``: the lowest add index still tracked, else the next
        add index. Computed before closed invoices are forgotten, so it may lag one
        batch behind but is never too high."""
        adds, slots, head = self._adds, self._add_slots, self._open.head
        passed = 0
        for add_index, slot in zip(adds, slots, strict=True):
            if head(slot)[0] == add_index:
                break
            passed += 1
        if passed:
            del adds[:passed]
            del slots[:passed]
        return adds[0] if adds else self.add_index + 1

    def positions(self) -> dict[str, int]:
        """The invoice positions to store with an append."""
        return {ADD_INDEX: self.add_index, SETTLE_INDEX: self.settle_index, OPEN_FLOOR: self.floor()}

    def _schedule(self, slot: int, due: float, *, wake: bool = True) -> None:
        second = math.ceil(due)
        slots = self._due.get(second)
        if slots is None:
            slots = self._due[second] = array("i")
            heapq.heappush(self._seconds, second)
        slots.append(slot)
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
        self._to_follow.update(self._hold_keys())
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
            due = self._pop_due(now)
            if due:
                await self._check(stubs, due, limiter)
                continue
            assert self._wake is not None
            delay = max(0.0, self._next_due - now)
            with anyio.move_on_after(min(delay, 3600.0)):
                await self._wake.wait()
            self._wake = anyio.Event()

    # The open set is replaced when it compacts: the helpers below read it without
    # keeping a reference across an await, which would hold a replaced set in memory.

    def _hold_keys(self) -> list[bytes]:
        tracked = self._open
        return [tracked.key(slot) for slot in tracked.slots() if tracked.flags(slot) & HOLD]

    def _pop_due(self, now: float) -> list[bytes]:
        """The hashes of open invoices whose timers have fired by ``now``."""
        due: dict[bytes, None] = {}
        seconds, tracked = self._seconds, self._open
        while seconds and seconds[0] <= now:
            slots = self._due.pop(heapq.heappop(seconds))
            self._timer_refs -= len(slots)
            for slot in slots:
                # Closed, or rescheduled to a later second.
                add_index, due_at = tracked.head(slot)
                if add_index and due_at <= now:
                    due[tracked.key(slot)] = None
        self._next_due = float(seconds[0]) if seconds else float("inf")
        return list(due)

    def _not_pending(self, pending: set[bytes], reached: int) -> set[bytes]:
        """The open invoices up to add index ``reached`` that are not in ``pending``."""
        tracked = self._open
        gone = set()
        for slot in tracked.slots():
            if tracked.head(slot)[0] <= reached and (key := tracked.key(slot)) not in pending:
                gone.add(key)
        return gone

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
                events.append(_ended(entry, key, now))
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
            slot = self._open.slot(key)
            self._open.update(slot, entry)
            self._schedule(slot, entry.due)
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
                    if entry is None:  # a malformed hash, not trackable
                        continue
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
        gone = self._not_pending(pending, reached)
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
