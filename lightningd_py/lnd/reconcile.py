"""Catch up on what LND's streams cannot replay, after every (re)connect.

Only the invoice stream replays. Channels, payments, forwards and backups that changed
while the daemon was disconnected are found here, with unary calls, and journaled in
batches together with the resume positions. Re-journaling a known fact is harmless:
the journal drops events whose ``dedupe_key()`` it has seen, so the channel
reconciliation simply journals LND's whole current set.

Also home of what every reader shares: ``StreamEnded``, the settings and journal
protocols, and ``unary()``, the one way the readers make a unary call.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import grpc
import structlog

from ..errors import LndError
from ..events import Event
from . import convert
from .errors import classify
from .rpc import lightning_pb2 as ln

__all__ = [
    "FORWARDS_TIME",
    "PAYMENTS_INDEX",
    "IndexFloor",
    "JournalLike",
    "RecentForwards",
    "StreamEnded",
    "StreamSettings",
    "answer",
    "export_backups",
    "reconcile_channels",
    "reconcile_forwards",
    "reconcile_payments",
    "start",
    "unary",
]

PAYMENTS_INDEX = "payments.index"
"""Every payment with an index up to this one is final and journaled."""

FORWARDS_TIME = "forwards.time"
"""``timestamp_ns`` of the newest settled forward journaled."""

_PAYMENT_PAGE = 1000
_FORWARD_PAGE = 10_000
# A forward journaled from the HTLC stream shows up in ForwardingHistory with a
# timestamp taken a moment apart; within this window it is recognised as the same.
_FORWARD_MATCH_NS = 5_000_000_000

_T = TypeVar("_T")

_log = structlog.get_logger("lightningd_py.lnd.reconcile")


class StreamEnded(LndError):
    """An LND stream ended or failed: the connection is treated as lost.

    LND ends its streams cleanly (status OK) when it shuts down, so end-of-stream is a
    disconnect like any error.

    :ivar stream: which stream (``"invoices"``, ``"htlc_events"``, ...).
    """

    def __init__(self, stream: str, code: str = "OK", details: str = "", kind: str = "unreachable") -> None:
        self.stream = stream
        super().__init__(code, f"{stream} stream ended: {details or 'LND closed it'}", kind)


class StreamSettings(Protocol):
    """The ``[lnd]`` settings the readers use (``lightningd_py.config``'s model)."""

    rpc_timeout: float
    invoice_page_size: int
    invoice_sweep_interval: float


class JournalLike(Protocol):
    """The part of ``lightningd_py.journal.Journal`` the readers use."""

    async def append(
        self, events: Sequence[Event], positions: Mapping[str, int] | None = None
    ) -> list[int]: ...

    def position(self, name: str) -> int | None: ...

    async def read(
        self, after: int, limit: int = 500, types: Collection[str] | None = None
    ) -> list[Event]: ...


async def unary(method: Callable[..., Awaitable[_T]], request: Any, deadline: float) -> _T:
    """Make one unary call; a gRPC failure raises the classified ``LndError``."""
    return await answer(start(method, request, deadline))


def start(method: Callable[..., Awaitable[_T]], request: Any, deadline: float) -> Awaitable[_T]:
    """Start one unary call (grpc.aio sends it at once); ``answer`` waits for its reply.
    Cancel the call if its reply is no longer wanted."""
    try:
        return method(request, timeout=deadline)
    except (grpc.RpcError, grpc.aio.UsageError) as exc:
        raise classify(exc) from exc


async def answer(call: Awaitable[_T]) -> _T:
    """The reply of a started call; a gRPC failure raises the classified ``LndError``."""
    try:
        return await call
    except (grpc.RpcError, grpc.aio.UsageError) as exc:
        raise classify(exc) from exc


# ---------------------------------------------------------------- channels


async def reconcile_channels(stubs: Any, journal: JournalLike, settings: StreamSettings) -> int:
    """Journal every pending, open and closed channel LND knows (dedupe drops the known
    ones). Returns how many events were new."""
    timeout = settings.rpc_timeout
    pending = await unary(stubs.lightning.PendingChannels, ln.PendingChannelsRequest(), timeout)
    channels = await unary(stubs.lightning.ListChannels, ln.ListChannelsRequest(), timeout)
    closed = await unary(stubs.lightning.ClosedChannels, ln.ClosedChannelsRequest(), timeout)
    now = time.time()
    events: list[Event] = [convert.pending_open_event(p, now) for p in pending.pending_open_channels]
    events.extend(convert.open_channel_event(c, now) for c in channels.channels)
    for summary in closed.channels:
        events.extend(convert.closed_channel_events(summary, now))
    if not events:
        return 0
    ids = await journal.append(events)
    return sum(1 for i in ids if i)


# ---------------------------------------------------------------- payments


class IndexFloor:
    """The highest payment index below which every payment is final and journaled.

    Payments finish out of order; the floor only moves through a contiguous run of
    finished indices, so a payment still in flight holds it back. LND reserves
    sequence numbers in blocks, so indices can jump after an LND restart; the floor
    then stalls until the next reconciliation recomputes it, which only costs a
    longer ``ListPayments`` catch-up, never a lost payment.
    """

    __slots__ = ("_done", "value")

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._done: set[int] = set()

    def reset(self, value: int, done: set[int]) -> None:
        """Set the floor and the finished indices above it (from ``ListPayments``)."""
        self.value = value
        self._done = {i for i in done if i > value}
        self._advance()

    def finished(self, index: int) -> int:
        """Record a finished payment; returns the new floor."""
        if index > self.value:
            self._done.add(index)
            self._advance()
        return self.value

    def _advance(self) -> None:
        done = self._done
        nxt = self.value + 1
        while nxt in done:
            done.discard(nxt)
            self.value = nxt
            nxt += 1


async def reconcile_payments(
    stubs: Any, journal: JournalLike, settings: StreamSettings, floor: IndexFloor
) -> int:
    """Journal payments that became final since the stored ``payments.index`` and
    reset ``floor``. Returns how many events were new."""
    start = journal.position(PAYMENTS_INDEX) or 0
    offset = start
    first_inflight: int | None = None
    done: set[int] = set()
    new = 0
    while True:
        request = ln.ListPaymentsRequest(
            include_incomplete=True, index_offset=offset, max_payments=_PAYMENT_PAGE
        )
        page = await unary(stubs.lightning.ListPayments, request, settings.rpc_timeout)
        if not page.payments:
            break
        now = time.time()
        events: list[Event] = []
        for payment in page.payments:
            event = convert.payment_event(payment, now)
            if event is None:
                if first_inflight is None or payment.payment_index < first_inflight:
                    first_inflight = payment.payment_index
            else:
                events.append(event)
                done.add(payment.payment_index)
        last = page.last_index_offset
        value = first_inflight - 1 if first_inflight is not None else last
        ids = await journal.append(events, {PAYMENTS_INDEX: max(start, value)})
        new += sum(1 for i in ids if i)
        if last <= offset:
            break
        offset = last
    value = first_inflight - 1 if first_inflight is not None else offset
    floor.reset(max(start, value), done)
    return new


# ---------------------------------------------------------------- forwards


class RecentForwards:
    """Settled forwards recently journaled from the HTLC stream, so that the same
    forward found again in ForwardingHistory (which has no HTLC ids) is not journaled
    a second time. Bounded: the oldest are dropped first."""

    __slots__ = ("_order", "_times")

    def __init__(self, size: int = 4096) -> None:
        self._order: deque[tuple[int, int, int, int]] = deque(maxlen=size)
        self._times: dict[tuple[int, int, int, int], deque[int]] = {}

    def add(self, chan_in: int, chan_out: int, amt_in: int, amt_out: int, ts_ns: int) -> None:
        key = (chan_in, chan_out, amt_in, amt_out)
        order = self._order
        if len(order) == order.maxlen:
            old = order[0]
            times = self._times.get(old)
            if times:
                times.popleft()
                if not times:
                    del self._times[old]
        order.append(key)
        self._times.setdefault(key, deque()).append(ts_ns)

    def seen(self, chan_in: int, chan_out: int, amt_in: int, amt_out: int, ts_ns: int) -> bool:
        times = self._times.get((chan_in, chan_out, amt_in, amt_out))
        return bool(times) and any(abs(ts - ts_ns) <= _FORWARD_MATCH_NS for ts in times)  # type: ignore[union-attr]


async def reconcile_forwards(
    stubs: Any, journal: JournalLike, settings: StreamSettings, recent: RecentForwards
) -> int:
    """Journal forwards settled since the stored ``forwards.time`` (ForwardingHistory).

    The first time (no stored time) nothing is journaled: the position starts at now,
    because LND's forwarding log has no HTLC ids and so cannot tell historical
    forwards on the same channel pair apart under the journal's dedupe key.
    Returns how many events were new.
    """
    stored = journal.position(FORWARDS_TIME)
    if stored is None:
        await journal.append([], {FORWARDS_TIME: time.time_ns()})
        return 0
    offset = 0
    newest = stored
    new = 0
    while True:
        request = ln.ForwardingHistoryRequest(
            start_time=stored // 1_000_000_000, index_offset=offset, num_max_events=_FORWARD_PAGE
        )
        page = await unary(stubs.lightning.ForwardingHistory, request, settings.rpc_timeout)
        if not page.forwarding_events:
            break
        now = time.time()
        events: list[Event] = []
        for fwd in page.forwarding_events:
            event = convert.forward_from_history(fwd, now)
            ts = event.timestamp_ns
            if ts <= stored or recent.seen(
                event.incoming_chan_id, event.outgoing_chan_id, event.amt_in_msat, event.amt_out_msat, ts
            ):
                continue
            events.append(event)
            newest = max(newest, ts)
        if events:
            ids = await journal.append(events, {FORWARDS_TIME: newest})
            new += sum(1 for i in ids if i)
        if page.last_offset_index <= offset:
            break
        offset = page.last_offset_index
    return new


# ---------------------------------------------------------------- backups


async def export_backups(stubs: Any, journal: JournalLike, settings: StreamSettings) -> bool:
    """Journal the current multi-channel backup once (ExportAllChannelBackups).
    Returns whether there was one (a node without channels has none)."""
    try:
        snapshot = await unary(
            stubs.lightning.ExportAllChannelBackups, ln.ChanBackupExportRequest(), settings.rpc_timeout
        )
    except LndError as exc:
        # LND answers "unable to find channel" style errors when there is nothing to
        # back up; that is not a connection problem.
        if exc.kind in ("not_found", "other") and exc.code not in ("UNAVAILABLE", "CANCELLED"):
            _log.info("no channel backup to export", reason=exc.details)
            return False
        raise
    event = convert.backup_event(snapshot)
    if event is None:
        return False
    await journal.append([event])
    return True
