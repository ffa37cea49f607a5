"""Detect invoice expiry and cancellation, which LND never reports on a stream.

LND's invoice stream reports additions and settlements only; it cancels expired
invoices silently and says nothing of cancellations. ``ExpiryTracker`` keeps every
open invoice in memory with a heap of expiry times; when one is due it asks LND
(``LookupInvoice``) and journals what happened: ``InvoiceExpired``, ``InvoiceSettled``
or ``InvoiceCanceled``. A periodic sweep of ``ListInvoices(pending_only)`` catches
what the timers cannot (cancellations before expiry, anything missed), journals
``InvoiceAccepted`` for hold invoices whose HTLCs are locked in, and hold invoices are
followed with ``SubscribeSingleInvoice``.

The tracker also holds the invoice reader's resume state (``add_index``,
``settle_index``) and the ``invoices.open_floor`` position: the lowest add index that
may still be open. Everything below it is closed and journaled, so after a restart
the reader re-reads invoices from the floor to find those closed while the daemon
was away and to rebuild the tracked set.

One tracker lives as long as the daemon; the supervisor passes it to every
``run_streams`` so reconnects keep it.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import grpc
import msgspec
import structlog

from ..errors import LndError
from ..events import Event, InvoiceCanceled, InvoiceCreated, InvoiceEvent, InvoiceExpired
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


@dataclass(slots=True)
class _Open:
    created: InvoiceCreated
    state: int
    hold: bool
    due: float
    attempts: int = 0
    followed: bool = False


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
        self._open: dict[str, _Open] = {}
        self._due: list[tuple[float, str]] = []
        self._by_add: list[tuple[int, str]] = []
        self._to_follow: set[str] = set()
        self._gone: set[str] = set()
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
        return payment_hash in self._open

    def expires_at(self, payment_hash: str) -> float | None:
        entry = self._open.get(payment_hash)
        return None if entry is None else float(entry.created.expires_at)

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

    def track(self, inv: Any, created: InvoiceCreated | None = None) -> None:
        """Track an OPEN or ACCEPTED ``lnrpc.Invoice`` until it is closed."""
        payment_hash = created.payment_hash if created is not None else inv.r_hash.hex()
        entry = self._open.get(payment_hash)
        if entry is not None:
            entry.state = inv.state
            return
        if created is None:
            created = convert.invoice_created(inv)
        due = float(created.expires_at)
        # Kept to describe an invoice LND deleted; the payment request is most of its
        # size and not needed for that.
        slim = msgspec.structs.replace(created, payment_request="")
        entry = _Open(slim, inv.state, convert.invoice_is_hold(inv), due)
        payment_hash = slim.payment_hash  # one string shared by the entry and the indexes
        self._open[payment_hash] = entry
        heapq.heappush(self._by_add, (created.add_index, payment_hash))
        self._schedule(payment_hash, due)
        if entry.hold:
            self._to_follow.add(payment_hash)
            if self._wake is not None:
                self._wake.set()

    def forget(self, payment_hash: str) -> None:
        """Stop tracking (its end has been journaled)."""
        if self._open.pop(payment_hash, None) is not None:
            self._to_follow.discard(payment_hash)
            self._gone.discard(payment_hash)
            # Heaps drop forgotten entries lazily; rebuild them before the stale
            # entries of a long burst of settlements pile up.
            if len(self._due) > 4 * len(self._open) + 4096:
                self._compact()

    def _compact(self) -> None:
        # A dict keeps the table it grew to for a burst however many entries remain: a
        # copy is sized for what is left.
        self._open = dict(self._open)
        # The heaps are rebuilt in place: a loop waiting with a reference to one (the
        # timers) would otherwise keep the old list, and a whole burst's entries, alive.
        self._due[:] = [(e.due, h) for h, e in self._open.items()]
        heapq.heapify(self._due)
        self._by_add[:] = [(e.created.add_index, h) for h, e in self._open.items()]
        heapq.heapify(self._by_add)
        self._next_due = self._due[0][0] if self._due else float("inf")

    def note_canceled(self, events: Iterable[Event]) -> None:
        """Remember the invoices just journaled as canceled (see ``canceled``)."""
        if self.canceled is not None:
            self.canceled.update(e.payment_hash for e in events if isinstance(e, InvoiceCanceled))

    def floor(self) -> int:
        """``invoices.open_floor``: the lowest add index still tracked, else the next
        add index. Computed before closed invoices are forgotten, so it may lag one
        batch behind but is never too high."""
        heap = self._by_add
        while heap:
            add_index, payment_hash = heap[0]
            entry = self._open.get(payment_hash)
            if entry is not None and entry.created.add_index == add_index:
                return add_index
            heapq.heappop(heap)
        return self.add_index + 1

    def positions(self) -> dict[str, int]:
        """The invoice positions to store with an append."""
        return {ADD_INDEX: self.add_index, SETTLE_INDEX: self.settle_index, OPEN_FLOOR: self.floor()}

    def _schedule(self, payment_hash: str, due: float) -> None:
        heapq.heappush(self._due, (due, payment_hash))
        if due < self._next_due:
            self._next_due = due
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
        for payment_hash, entry in self._open.items():
            entry.followed = False
            if entry.hold:
                self._to_follow.add(payment_hash)
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
            due: list[str] = []
            heap = self._due
            while heap and heap[0][0] <= now:
                when, payment_hash = heapq.heappop(heap)
                entry = self._open.get(payment_hash)
                if entry is not None and entry.due == when:
                    due.append(payment_hash)
            self._next_due = heap[0][0] if heap else float("inf")
            if due:
                await self._check(stubs, due, limiter)
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

    async def _check(self, stubs: Any, hashes: list[str], limiter: anyio.CapacityLimiter) -> None:
        """Look the given invoices up and journal the ends found, in one append."""
        found: dict[str, Any] = {}

        async def one(payment_hash: str) -> None:
            entry = self._open.get(payment_hash)
            if entry is None:
                return
            async with limiter:
                found[payment_hash] = await self._lookup(stubs, bytes.fromhex(payment_hash))

        async with anyio.create_task_group() as tg:
            for payment_hash in hashes:
                tg.start_soon(one, payment_hash)
        await self._resolve(found)

    async def _resolve(self, found: dict[str, Any]) -> None:
        """Journal what the looked-up invoices say; reschedule those still open."""
        now = self._clock()
        events: list[InvoiceEvent] = []
        closed: list[str] = []
        for payment_hash, inv in found.items():
            entry = self._open.get(payment_hash)
            if entry is None:
                continue
            if inv is None:
                # Gone from LND: canceled (and deleted) or expired.
                fields = {f: getattr(entry.created, f) for f in entry.created.__struct_fields__}
                fields["time"] = now
                cls = InvoiceCanceled if now < entry.created.expires_at else InvoiceExpired
                events.append(cls(**fields))
                closed.append(payment_hash)
                continue
            state = inv.state
            if state == convert.SETTLED or state == convert.CANCELED:
                event = convert.invoice_state_event(inv, now)
                assert event is not None
                events.append(event)
                closed.append(payment_hash)
                continue
            if state == convert.ACCEPTED:
                if entry.state != convert.ACCEPTED:
                    events.append(convert.invoice_state_event(inv, now))  # type: ignore[arg-type]
                entry.state = state
                entry.due = now + _ACCEPTED_RECHECK
            else:
                # Still OPEN: before its expiry time (expiry extended?) wait for it,
                # after it LND is about to cancel it.
                expires = float(entry.created.expires_at)
                if now < expires:
                    entry.due = expires
                else:
                    entry.due = now + _RECHECK_DELAYS[min(entry.attempts, len(_RECHECK_DELAYS) - 1)]
                    entry.attempts += 1
            self._schedule(payment_hash, entry.due)
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
        pending: set[str] = set()
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
                payment_hash = inv.r_hash.hex()
                pending.add(payment_hash)
                entry = self._open.get(payment_hash)
                if entry is None:
                    # Its creation is journaled: the reader has passed its add index.
                    self.track(inv, convert.invoice_created(inv, now))
                    entry = self._open[payment_hash]
                    if inv.state == convert.ACCEPTED:
                        entry.state = convert.OPEN  # so the ACCEPTED branch below journals it
                if inv.state == convert.ACCEPTED and entry.state != convert.ACCEPTED:
                    entry.state = convert.ACCEPTED
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
        gone = {h for h, e in self._open.items() if h not in pending and e.created.add_index <= reached}
        suspects = [h for h in gone if h in self._gone][:_SWEEP_LOOKUPS]
        self._gone = gone
        if suspects:
            await self._check(stubs, suspects, limiter or anyio.CapacityLimiter(_LOOKUP_CONCURRENCY))

    # ------------------------------------------------------------ hold invoices

    def _start_followers(self, stubs: Any, tg: anyio.abc.TaskGroup) -> None:
        while self._to_follow and self._following < _MAX_FOLLOWERS:
            # Beyond the limit the sweep and the timers still cover hold invoices.
            payment_hash = self._to_follow.pop()
            entry = self._open.get(payment_hash)
            if entry is None or entry.followed:
                continue
            entry.followed = True
            self._following += 1
            tg.start_soon(self._follow, stubs, payment_hash)

    async def _follow(self, stubs: Any, payment_hash: str) -> None:
        """Follow one hold invoice with SubscribeSingleInvoice until it ends."""
        call = None
        try:
            entry = self._open.get(payment_hash)
            if entry is None:
                return
            request = invoices_pb2.SubscribeSingleInvoiceRequest(r_hash=bytes.fromhex(payment_hash))
            call = stubs.invoices.SubscribeSingleInvoice(request)
            async for inv in call:
                entry = self._open.get(payment_hash)
                if entry is None:
                    return
                state = inv.state
                if state == convert.OPEN:
                    continue
                if state == convert.ACCEPTED and entry.state == convert.ACCEPTED:
                    continue
                await self._resolve({payment_hash: inv})
                if state != convert.ACCEPTED:
                    return
        except (grpc.RpcError, grpc.aio.UsageError) as exc:
            # A lost connection ends the main streams too; the follower just stops
            # (timers and sweeps still cover the invoice).
            _log.debug("hold invoice follower stopped", payment_hash=payment_hash, error=str(classify(exc)))
        finally:
            if call is not None:
                call.cancel()
            self._following -= 1
            entry = self._open.get(payment_hash)
            if entry is not None:
                entry.followed = False
