"""LND's streams -> the journal: one reader task per stream.

``run_streams`` is started by the supervisor inside the LND link's ``on_active`` (LND
is SERVER_ACTIVE) and runs until the link cancels it or a stream ends. Each reader

1. subscribes first, then catches up with unary calls (ListInvoices, reconciliation),
   so nothing falls between the catch-up and the stream's start (the invoice stream's
   replay starts after what LND had before the subscription, which the catch-up reads
   itself: ``_replay_start``);
2. reads its stream in a small reading task into a bounded buffer, and journals
   whatever arrived together (up to ``BATCH`` messages, no artificial delay) with one
   ``journal.append(events, positions)``, the stream's resume positions committed in
   the same transaction.

No plugin code runs here: plugins read the journal on their own tasks.

LND ends its streams with status OK when it shuts down; that, like any stream error,
raises ``StreamEnded`` (an ``LndError``) out of ``run_streams``, so the link treats it
as a disconnect and reconnects.

Resume positions (``journal.position(name)``):

- ``invoices.add_index``, ``invoices.settle_index``: LND's invoice indices, every
  invoice up to them journaled (created / settled);
- ``invoices.open_floor``: lowest add index that may still be open (see ``expiry``);
- ``payments.index``: every payment up to it final and journaled;
- ``forwards.time``: ``timestamp_ns`` of the newest settled forward journaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import grpc
import structlog

from ..errors import LndError
from ..events import Event, InvoiceEvent, InvoiceExpired
from . import convert
from .errors import classify
from .expiry import ADD_INDEX, OPEN_FLOOR, SETTLE_INDEX, ExpiryTracker
from .reconcile import (
    FORWARDS_TIME,
    PAYMENTS_INDEX,
    IndexFloor,
    JournalLike,
    RecentForwards,
    StreamEnded,
    StreamSettings,
    answer,
    export_backups,
    reconcile_channels,
    reconcile_forwards,
    reconcile_payments,
    start,
    unary,
)
from .rpc import lightning_pb2 as ln
from .rpc import router_pb2

if TYPE_CHECKING:
    from ..daemon import NodeStatus

__all__ = [
    "ADD_INDEX",
    "BATCH",
    "FORWARDS_TIME",
    "OPEN_FLOOR",
    "PAYMENTS_INDEX",
    "POSITION_NAMES",
    "READY_KEY",
    "SETTLE_INDEX",
    "STREAMS",
    "StreamEnded",
    "run_streams",
]

BATCH = 250
"""Most messages journaled in one append. Larger appends did not make a burst or a
catch-up faster, but raised the memory held in flight; what a burst leaves allocated
pins allocator arenas sized by that peak (after 300,000 events: +4.9 and +5.1 % at 250,
+6.1 % at 500, +10.3 to +12.4 % at 1,000)."""

READY_KEY = "streams_ready"
"""``NodeStatus.extra`` key: True while every stream is subscribed and caught up."""

STREAMS: tuple[str, ...] = ("invoices", "channel_events", "payments", "htlc_events", "peer_events", "backups")

POSITION_NAMES: tuple[str, ...] = (ADD_INDEX, SETTLE_INDEX, OPEN_FLOOR, PAYMENTS_INDEX, FORWARDS_TIME)

_log = structlog.get_logger("lightningd_py.lnd.streams")

# HtlcEvent.EventType.FORWARD
_FORWARD = 3
# ForwardEvents waiting for their settle/fail: bounded, oldest dropped first (a
# settle whose ForwardEvent was dropped or never seen is journaled without amounts).
_PENDING_FORWARDS = 20_000
_RESOLVED_FORWARDS = 20_000


@dataclass(slots=True)
class _Readers:
    """What the readers of one connection share."""

    stubs: Any
    journal: JournalLike
    settings: StreamSettings
    node: NodeStatus
    expiry: ExpiryTracker
    tg: anyio.abc.TaskGroup
    ready: set[str] = field(default_factory=set)

    def mark_ready(self, stream: str) -> None:
        self.ready.add(stream)
        if len(self.ready) == len(STREAMS):
            self.node.extra[READY_KEY] = True
            _log.info("LND streams subscribed and caught up", streams=len(STREAMS))


async def run_streams(
    stubs: Any,
    journal: JournalLike,
    settings: StreamSettings,
    node: NodeStatus,
    expiry: ExpiryTracker,
) -> None:
    """Read every LND stream into the journal until cancelled or a stream ends.

    :param stubs: the link's ``Stubs`` (``.lightning``, ``.router``, ``.invoices``).
    :param journal: the daemon's journal.
    :param settings: the ``[lnd]`` settings (``rpc_timeout``, ``invoice_page_size``,
        ``invoice_sweep_interval``).
    :param node: the daemon's ``NodeStatus``; ``node.extra["streams_ready"]`` becomes
        True once every stream is subscribed and caught up, False when this returns.
    :param expiry: the daemon's one ``ExpiryTracker`` (it outlives connections;
        built on the same journal and settings).
    :raises StreamEnded: a stream ended (LND shutting down) or failed.
    :raises LndError: a catch-up call failed.
    """
    node.extra[READY_KEY] = False
    try:
        async with anyio.create_task_group() as tg:
            readers = _Readers(stubs, journal, settings, node, expiry, tg)
            tg.start_soon(_invoices, readers)
            tg.start_soon(_channel_events, readers)
            tg.start_soon(_payments, readers, IndexFloor())
            tg.start_soon(_htlc_events, readers, expiry.recent_forwards)
            tg.start_soon(_peer_events, readers)
            tg.start_soon(_backups, readers)
    except BaseExceptionGroup as group:
        error = _first_lnd_error(group)
        if error is None:
            raise
        raise error from None
    finally:
        node.extra[READY_KEY] = False


def _first_lnd_error(group: BaseExceptionGroup[Any]) -> LndError | None:
    for exc in group.exceptions:
        if isinstance(exc, LndError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_lnd_error(exc)
            if found is not None:
                return found
    return None


# ---------------------------------------------------------------- the read loop


class _Inbox:
    """Messages the reading task has read and the journaling side has not taken yet, at
    most ``size``. It sits on the path of every message of a stream, so it is built on
    asyncio's futures alone: an anyio memory stream, which looks up its async backend
    on every call, took about a tenth of the event loop's time in a burst of
    settlements."""

    __slots__ = ("_items", "_putter", "_size", "_taker", "closed")

    def __init__(self, size: int) -> None:
        self._items: list[Any] = []
        self._size = size
        self._taker: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None
        self.closed = False

    async def put(self, item: Any) -> None:
        """Add ``item``; while ``size`` messages wait, wait for the taker first."""
        while len(self._items) >= self._size:
            self._putter = asyncio.get_running_loop().create_future()
            try:
                await self._putter
            finally:
                self._putter = None
        self._items.append(item)
        _wake(self._taker)

    def close(self) -> None:
        """Nothing more will be put: ``take`` returns what is left, then nothing."""
        self.closed = True
        _wake(self._taker)

    async def take(self) -> list[Any]:
        """Everything waiting (at least one message), or [] once closed and empty."""
        while not self._items:
            if self.closed:
                return []
            self._taker = asyncio.get_running_loop().create_future()
            try:
                await self._taker
            finally:
                self._taker = None
        batch, self._items = self._items, []
        _wake(self._putter)
        return batch


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _pump(call: Any, stream: str, handle: Callable[[list[Any]], Awaitable[None]]) -> None:
    """Read ``call`` until it ends, handing what arrived together to ``handle``.

    The reading task fills a buffer of ``BATCH`` messages while ``handle`` journals
    the previous batch, so a burst is journaled in a few large appends; when the
    buffer is full, reading waits (gRPC flow control then holds LND back). When the
    stream ends, what was read is journaled before ``StreamEnded`` is raised. When
    ``handle`` raises or the pump is cancelled, the reading task just stops: the
    handler's error, or the cancellation, is what leaves the pump. Neither task keeps
    a message it has passed on while it waits for the next: after a burst, a batch held
    until the stream's next message would pin the memory of up to ``BATCH`` messages
    for as long as the node stays quiet.
    """
    inbox = _Inbox(BATCH)
    ended: list[StreamEnded] = []

    async def read() -> None:
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    ended.append(StreamEnded(stream))
                    return
                await inbox.put(message)
                del message
        except (grpc.RpcError, grpc.aio.UsageError) as exc:
            error = classify(exc)
            end = StreamEnded(stream, error.code, error.details, error.kind)
            end.__cause__ = exc
            ended.append(end)
        finally:
            inbox.close()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            while batch := await inbox.take():
                await handle(batch)
                del batch
    finally:
        call.cancel()
    raise ended[0] if ended else StreamEnded(stream)


def _open(stream: str, method: Callable[..., Any], request: Any) -> Any:
    try:
        return method(request)
    except (grpc.RpcError, grpc.aio.UsageError) as exc:
        error = classify(exc)
        raise StreamEnded(stream, error.code, error.details, error.kind) from exc


# ---------------------------------------------------------------- invoices


async def _invoices(r: _Readers) -> None:
    tracker = r.expiry
    offset = tracker.load_positions()
    add_index, settle_index = await _replay_start(r)
    settle_start = max(tracker.settle_index, settle_index)
    request = ln.InvoiceSubscription(add_index=max(tracker.add_index, add_index), settle_index=settle_start)
    call = _open("invoices", r.stubs.lightning.SubscribeInvoices, request)
    try:
        await _invoice_catch_up(r, offset, settle_start)
    except BaseException:
        call.cancel()
        raise
    tracker.loaded = True
    r.tg.start_soon(tracker.run, r.stubs)
    r.mark_ready("invoices")

    journal = r.journal
    created_event = convert.invoice_created
    state_event = convert.invoice_state_event
    OPEN, SETTLED, CANCELED = convert.OPEN, convert.SETTLED, convert.CANCELED

    async def handle(batch: list[Any]) -> None:
        now = time.time()
        events: list[Event] = []
        closing: list[str] = []
        for inv in batch:
            state = inv.state
            add_index = inv.add_index
            if state == OPEN:
                # Replays repeat what is known; LND sends each addition once.
                if add_index <= tracker.add_index:
                    continue
                created = created_event(inv, now)
                events.append(created)
                tracker.track(inv)
                tracker.add_index = add_index
                continue
            if state == SETTLED:
                settle_index = inv.settle_index
                if settle_index <= tracker.settle_index:
                    continue
                tracker.settle_index = settle_index
            if add_index > tracker.add_index:
                events.append(created_event(inv, now))
                tracker.add_index = add_index
            event = state_event(inv, now)
            if event is not None:
                events.append(event)
            if state == SETTLED or state == CANCELED:
                closing.append(event.payment_hash if event is not None else inv.r_hash.hex())
            else:
                tracker.track(inv)
        if events:
            await journal.append(events, tracker.positions())
            if closing:
                tracker.note_canceled(events)
        for payment_hash in closing:
            tracker.forget(payment_hash)

    await _pump(call, "invoices", handle)


async def _replay_start(r: _Readers) -> tuple[int, int]:
    """Where the invoice stream's replay may start: LND's newest add index, and the
    highest settle index among its newest invoices (0, 0 when it has none).

    LND replays every invoice added after the subscription's add_index and every one
    settled after its settle_index, and the reader gets through that replay before
    anything live. From the stored indices, after 100,000 invoices were made and settled
    while the daemon was stopped, that is 200,000 messages, each one already journaled
    by the catch-up. Every addition and settlement up to the indices read here was made
    before the subscription and before any page the catch-up reads, so the catch-up
    journals them; the replay is left with what happens until LND registers the
    subscription (and settlements of older invoices newer than any of these).
    """
    request = ln.ListInvoiceRequest(reversed=True, num_max_invoices=r.settings.invoice_page_size)
    page = await unary(r.stubs.lightning.ListInvoices, request, r.settings.rpc_timeout)
    settled = max((inv.settle_index for inv in page.invoices), default=0)
    return int(page.last_index_offset), int(settled)


async def _invoice_catch_up(r: _Readers, offset: int, settle_start: int) -> None:
    """Journal every invoice from ``offset`` (exclusive) on, in its current state:
    the whole history on first sync, else what changed while disconnected.

    The settle index it leaves has every settlement up to it journaled. A page shows an
    invoice as it was when that page was read, so an invoice read open on one page may
    be settled before a later page shows a newer settlement: that index has a gap below
    it until the stream brings the earlier one. The stream (from ``settle_start``, which
    every settlement read by ``_replay_start`` is at or below) brings every later one, in
    order, and moves the index on from there."""
    tracker = r.expiry
    known_add = tracker.add_index
    known_settle = tracker.settle_index
    settled = _Unbroken(known_settle)
    pages = 0
    async with contextlib.aclosing(_invoice_pages(r, offset)) as invoice_pages:
        async for page, last_page in invoice_pages:
            now = time.time()
            events: list[Event] = []
            closing: list[str] = []
            for inv in page.invoices:
                add_index = inv.add_index
                state = inv.state
                new = add_index > known_add
                created = convert.invoice_created(inv, now) if new else None
                if created is not None:
                    events.append(created)
                if add_index > tracker.add_index:
                    tracker.add_index = add_index
                if state == convert.OPEN:
                    tracker.track(inv)
                    continue
                payment_hash = inv.r_hash.hex()
                if state == convert.SETTLED:
                    if inv.settle_index > known_settle:
                        settled.add(inv.settle_index)
                    if new or inv.settle_index > known_settle or payment_hash in tracker:
                        events.append(convert.invoice_state_event(inv, now))  # type: ignore[arg-type]
                        closing.append(payment_hash)
                elif state == convert.ACCEPTED:
                    events.append(convert.invoice_state_event(inv, now))  # type: ignore[arg-type]
                    tracker.track(inv)
                elif state == convert.CANCELED:
                    # At or above the floor: open when last seen, or closed out of order.
                    closed = convert.invoice_closed_event(inv, now)
                    if not new and payment_hash not in tracker and isinstance(closed, InvoiceExpired):
                        # Seen canceled before its expiry, it was journaled as canceled.
                        if tracker.canceled is None:
                            tracker.canceled = await _journaled_cancels(r.journal)
                        if payment_hash in tracker.canceled:
                            continue
                    events.append(closed)
                    closing.append(payment_hash)
            if last_page:
                tracker.settle_index = max(tracker.settle_index, settle_start, settled.top)
            if events or last_page or pages % 10 == 9:
                await r.journal.append(events, tracker.positions())
                tracker.note_canceled(events)
            for payment_hash in closing:
                tracker.forget(payment_hash)
            pages += 1
    _log.debug("invoice catch-up done", pages=pages, add_index=tracker.add_index, open=len(tracker))


async def _invoice_pages(r: _Readers, offset: int) -> AsyncIterator[tuple[Any, bool]]:
    """ListInvoices pages after ``offset`` with whether each is the last. The next page
    is asked for as soon as a page arrives, so LND reads it while the caller converts
    and commits this one."""
    page_size = r.settings.invoice_page_size

    def ask(after: int) -> Any:
        request = ln.ListInvoiceRequest(index_offset=after, num_max_invoices=page_size)
        return start(r.stubs.lightning.ListInvoices, request, r.settings.rpc_timeout)

    call = ask(offset)
    try:
        while call is not None:
            page = await answer(call)
            last_page = len(page.invoices) < page_size or page.last_index_offset <= offset
            offset = page.last_index_offset
            call = None if last_page else ask(offset)
            yield page, last_page
    finally:
        if call is not None:
            call.cancel()


class _Unbroken:
    """The highest index ``top`` such that every index in ``(after, top]`` was added,
    kept up as indices arrive. Only indices that came ahead of a missing one are held,
    so a catch-up of settlements that arrive in order holds none of them."""

    def __init__(self, after: int) -> None:
        self.top = after
        self._ahead: set[int] = set()

    def add(self, index: int) -> None:
        if index <= self.top:
            return
        if index != self.top + 1:
            self._ahead.add(index)
            return
        top, ahead = index, self._ahead
        while top + 1 in ahead:
            top += 1
            ahead.discard(top)
        self.top = top


async def _journaled_cancels(journal: JournalLike) -> set[str]:
    """Hashes of every invoice journaled as canceled (rare: explicit cancellations)."""
    found: set[str] = set()
    after = 0
    while True:
        batch = await journal.read(after, limit=5000, types=("invoice.canceled",))
        if not batch:
            return found
        found.update(e.payment_hash for e in batch if isinstance(e, InvoiceEvent))
        after = batch[-1].id


# ---------------------------------------------------------------- channels, peers, backups


async def _channel_events(r: _Readers) -> None:
    call = _open("channel_events", r.stubs.lightning.SubscribeChannelEvents, ln.ChannelEventSubscription())
    try:
        await reconcile_channels(r.stubs, r.journal, r.settings)
    except BaseException:
        call.cancel()
        raise
    r.mark_ready("channel_events")
    journal = r.journal

    async def handle(batch: list[Any]) -> None:
        now = time.time()
        events = [e for e in (convert.channel_event(m, now) for m in batch) if e is not None]
        if events:
            await journal.append(events)

    await _pump(call, "channel_events", handle)


async def _peer_events(r: _Readers) -> None:
    call = _open("peer_events", r.stubs.lightning.SubscribePeerEvents, ln.PeerEventSubscription())
    r.mark_ready("peer_events")
    journal = r.journal

    async def handle(batch: list[Any]) -> None:
        now = time.time()
        await journal.append([convert.peer_event(m, now) for m in batch])

    await _pump(call, "peer_events", handle)


async def _backups(r: _Readers) -> None:
    call = _open("backups", r.stubs.lightning.SubscribeChannelBackups, ln.ChannelBackupSubscription())
    try:
        await export_backups(r.stubs, r.journal, r.settings)
    except BaseException:
        call.cancel()
        raise
    r.mark_ready("backups")
    journal = r.journal

    async def handle(batch: list[Any]) -> None:
        # Each snapshot covers every channel: only the newest of a burst matters.
        event = convert.backup_event(batch[-1])
        if event is not None:
            await journal.append([event])

    await _pump(call, "backups", handle)


# ---------------------------------------------------------------- payments


async def _payments(r: _Readers, floor: IndexFloor) -> None:
    request = router_pb2.TrackPaymentsRequest(no_inflight_updates=True)
    call = _open("payments", r.stubs.router.TrackPayments, request)
    try:
        await reconcile_payments(r.stubs, r.journal, r.settings, floor)
    except BaseException:
        call.cancel()
        raise
    r.mark_ready("payments")
    journal = r.journal

    async def handle(batch: list[Any]) -> None:
        now = time.time()
        events: list[Event] = []
        for payment in batch:
            event = convert.payment_event(payment, now)
            if event is not None:
                events.append(event)
                floor.finished(payment.payment_index)
        if events:
            await journal.append(events, {PAYMENTS_INDEX: floor.value})

    await _pump(call, "payments", handle)


# ---------------------------------------------------------------- forwards


async def _htlc_events(r: _Readers, recent: RecentForwards) -> None:
    call = _open("htlc_events", r.stubs.router.SubscribeHtlcEvents, router_pb2.SubscribeHtlcEventsRequest())
    try:
        await reconcile_forwards(r.stubs, r.journal, r.settings, recent)
    except BaseException:
        call.cancel()
        raise
    r.mark_ready("htlc_events")
    journal = r.journal
    # key -> (incoming amt msat, outgoing amt msat), from the ForwardEvent.
    pending: OrderedDict[tuple[int, int, int, int], tuple[int, int]] = OrderedDict()
    # HTLC events may repeat: keys already resolved are skipped before the journal.
    resolved: OrderedDict[tuple[int, int, int, int], None] = OrderedDict()
    newest = r.journal.position(FORWARDS_TIME) or 0

    async def handle(batch: list[Any]) -> None:
        nonlocal newest
        now = time.time()
        events: list[Event] = []
        for htlc in batch:
            if htlc.event_type != _FORWARD:
                continue
            key = (
                htlc.incoming_channel_id,
                htlc.incoming_htlc_id,
                htlc.outgoing_channel_id,
                htlc.outgoing_htlc_id,
            )
            kind = htlc.WhichOneof("event")
            if kind == "forward_event":
                if key not in resolved:
                    info = htlc.forward_event.info
                    pending[key] = (info.incoming_amt_msat, info.outgoing_amt_msat)
                    if len(pending) > _PENDING_FORWARDS:
                        pending.popitem(last=False)
                continue
            if kind not in ("settle_event", "forward_fail_event", "link_fail_event") or key in resolved:
                continue
            resolved[key] = None
            if len(resolved) > _RESOLVED_FORWARDS:
                resolved.popitem(last=False)
            ts = htlc.timestamp_ns
            if kind == "link_fail_event":
                link_fail = htlc.link_fail_event
                pending.pop(key, None)
                amounts = (link_fail.info.incoming_amt_msat, link_fail.info.outgoing_amt_msat)
                events.append(convert.forward_failed(key, *amounts, ts, convert.link_failure(link_fail), now))
                continue
            amt_in, amt_out = pending.pop(key, (0, 0))
            if kind == "settle_event":
                events.append(convert.forward_settled(key, amt_in, amt_out, ts, now))
                recent.add(key[0], key[2], amt_in, amt_out, ts)
                if ts > newest:
                    newest = ts
            else:
                events.append(convert.forward_failed(key, amt_in, amt_out, ts, "downstream failure", now))
        if events:
            await journal.append(events, {FORWARDS_TIME: newest} if newest else None)

    await _pump(call, "htlc_events", handle)
