"""Delivery workers: turn outbox rows into signed HTTP POSTs, retry, record the outcome.

Each endpoint has its own worker: a bounded in-memory queue of deliveries ready to
send, ``concurrency`` sender tasks draining it, a heap of deliveries waiting for their
retry time, and a scheduler that moves due retries to the queue and scans the outbox
for rows not held in memory (left by a previous run, or that did not fit). An endpoint
that is slow or down therefore only ever occupies its own senders.

The database is the truth; memory is a cache of it. A row leaves memory only after the
update recording its attempt was queued, and every scan first waits for queued writes
to commit and then skips rows that finished while it ran, so a scan never resends a
delivery that already succeeded.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import time
from collections import deque
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import anyio.lowlevel
from anyio import WouldBlock

from .catalogue import EventFilter
from .outbox import Delivery, delivery_from_row
from .signing import sign_headers

if TYPE_CHECKING:
    from lightningd_py.api import StoreHandle

    from .metrics import WebhookMetrics
    from .settings import EndpointSettings, WebhooksSettings

__all__ = ["EndpointWorker", "depths", "parse_retry_after", "retry_delay"]

# Receivers answer with a short acknowledgement; anything longer is not read.
_MAX_RESPONSE_READ = 64 * 1024
_HEALTH_WINDOW = 100
_OUTCOMES = ("success", "http_error", "timeout", "connection_error")

_SELECT_PENDING_IDS = (
    "SELECT msg_id FROM webhooks_deliveries WHERE endpoint = ? AND status = 'pending' "
    "ORDER BY next_attempt_at, id LIMIT ?"
)
_SELECT_ROWS = (
    "SELECT msg_id, endpoint, event_type, event_time, body, attempts, next_attempt_at "
    "FROM webhooks_deliveries WHERE status = 'pending' "
    "AND msg_id IN (SELECT value FROM json_each(?))"
)
_UPDATE_DELIVERED = (
    "UPDATE webhooks_deliveries SET status = 'delivered', attempts = ?, last_attempt_at = ?, "
    "last_status_code = ?, last_error = NULL, delivered_at = ? WHERE msg_id = ?"
)
_UPDATE_RETRY = (
    "UPDATE webhooks_deliveries SET attempts = ?, last_attempt_at = ?, last_status_code = ?, "
    "last_error = ?, next_attempt_at = ? WHERE msg_id = ? AND status = 'pending'"
)
_UPDATE_FAILED = (
    "UPDATE webhooks_deliveries SET status = 'failed', attempts = ?, last_attempt_at = ?, "
    "last_status_code = ?, last_error = ? WHERE msg_id = ? AND status = 'pending'"
)


def retry_delay(schedule: list[float], attempts: int, jitter: float) -> float | None:
    """Seconds to wait before the next attempt after ``attempts`` attempts, or None
    when the schedule is spent. ``schedule[i]`` is the wait before attempt ``i + 1``."""
    if attempts >= len(schedule):
        return None
    base = schedule[attempts]
    return base * random.uniform(1 - jitter, 1 + jitter) if base > 0 else 0.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _describe_error(exc: BaseException) -> str:
    """A short reason that names no URL (URLs may carry tokens) and no secret."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return f"cannot connect: {reason}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return f"request failed: {exc.strerror}"
    return f"request failed: {type(exc).__name__}"


class EndpointWorker:
    """Delivery state and tasks of one endpoint.

    :ivar settings: the endpoint's current settings (replaced on config reload).
    :ivar filter: the webhook events the endpoint subscribed to.
    :ivar depth: deliveries of this endpoint not yet final (the queue-depth gauge).
    """

    def __init__(
        self,
        settings: EndpointSettings,
        plugin: WebhooksSettings,
        store: StoreHandle,
        metrics: WebhookMetrics,
        log: Any,
    ) -> None:
        self.settings = settings
        self.plugin = plugin
        self.filter = EventFilter(settings.events)
        self._keys = settings.keys
        self._store = store
        self._log = log
        self._send, self._recv = anyio.create_memory_object_stream[Delivery](plugin.memory_queue)
        self._waiting: list[tuple[float, int, Delivery]] = []
        self._seq = itertools.count()
        self._known: set[str] = set()
        self._recent: set[str] | None = None
        self._overflow = False
        self._wake = anyio.Event()
        self.depth = 0
        self.in_flight = 0
        self._results: deque[bool] = deque(maxlen=_HEALTH_WINDOW)
        # Labelled children resolved once: labels() costs more than the increment itself.
        name = settings.name
        self._attempts = {o: metrics.attempts.labels(name, o) for o in _OUTCOMES}
        self._delivered = metrics.deliveries.labels(name, "delivered")
        self._failed = metrics.deliveries.labels(name, "failed")
        self._latency = metrics.latency.labels(name)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_success_at: float | None = None
        self.consecutive_failures = 0

    @property
    def name(self) -> str:
        return self.settings.name

    def holds(self, msg_id: str) -> bool:
        """Whether the delivery is in memory (queued, waiting for a retry, or in flight)."""
        return msg_id in self._known

    # ------------------------------------------------------------ intake

    def offer(self, delivery: Delivery, *, new: bool) -> None:
        """Take a delivery whose row is written (or queued for writing).

        :param new: the row just became pending (counts towards the queue depth).
        """
        if delivery.msg_id in self._known:
            return
        if new:
            self.depth += 1
        if not self._try_send(delivery):
            # The row is durable: the scheduler picks it up from the outbox when there is room.
            self._overflow = True
            self._wake.set()
            return
        self._known.add(delivery.msg_id)

    async def load(self) -> None:
        """Load what a previous run left pending (at start, before events flow)."""
        await self._store.flush()
        row = await self._store.fetchone(
            "SELECT COUNT(*) AS n FROM webhooks_deliveries WHERE endpoint = ? AND status = 'pending'",
            (self.name,),
        )
        self.depth = row["n"] if row else 0
        await self._scan()

    # ------------------------------------------------------------ tasks

    async def run(self, session: aiohttp.ClientSession) -> None:
        """The endpoint's senders and scheduler, until cancelled."""
        async with anyio.create_task_group() as tg:
            for _ in range(self.settings.concurrency):
                tg.start_soon(self._sender, session)
            await self._schedule()

    async def _sender(self, session: aiohttp.ClientSession) -> None:
        async for delivery in self._recv:
            self.in_flight += 1
            try:
                await self.attempt(session, delivery)
            finally:
                self.in_flight -= 1

    async def _schedule(self) -> None:
        next_scan = time.time() + self.plugin.scan_interval
        while True:
            now = time.time()
            blocked = self._release_due(now)
            if self._overflow or now >= next_scan:
                await self._scan()
                next_scan = time.time() + self.plugin.scan_interval
            now = time.time()
            wait = next_scan - now
            if self._overflow or blocked:
                # The queue is full: look again once the senders made room.
                wait = min(wait, 0.05)
            elif self._waiting:
                wait = min(wait, self._waiting[0][0] - now)
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._wake.wait()
            else:
                await anyio.lowlevel.checkpoint()
            if self._wake.is_set():
                self._wake = anyio.Event()

    def _release_due(self, now: float) -> bool:
        """Move due retries to the send queue; True when the queue had no room."""
        while self._waiting and self._waiting[0][0] <= now:
            if not self._try_send(self._waiting[0][2]):
                return True
            heapq.heappop(self._waiting)
        return False

    async def _scan(self) -> None:
        """Bring pending outbox rows not held in memory into memory, as room allows."""
        room = 2 * self.plugin.memory_queue - self._send.statistics().current_buffer_used - len(self._waiting)
        if room <= 0:
            return
        self._recent = set()
        try:
            # Commits every update queued so far: a row read as pending below is pending,
            # unless it finished during the query, which _recent records.
            await self._store.flush()
            limit = room + len(self._known)
            ids = await self._store.fetchall(_SELECT_PENDING_IDS, (self.name, limit))
            skip = self._known | self._recent
            wanted = [r["msg_id"] for r in ids if r["msg_id"] not in skip][:room]
            # Bodies only for the rows taken (their ids as one JSON array).
            rows = await self._store.fetchall(_SELECT_ROWS, (json.dumps(wanted),))
            # Rows that finished while the bodies were read are not pending any more.
            skip = self._known | self._recent
        finally:
            self._recent = None
        loaded = 0
        now = time.time()
        for row in sorted(rows, key=lambda r: r["next_attempt_at"]):
            if row["msg_id"] in skip:
                continue
            delivery = delivery_from_row(row)
            if delivery.due > now or not self._try_send(delivery):
                if len(self._waiting) >= self.plugin.memory_queue:
                    break
                heapq.heappush(self._waiting, (delivery.due, next(self._seq), delivery))
            self._known.add(delivery.msg_id)
            loaded += 1
        # Scan again soon only when that can make progress; otherwise the periodic scan will.
        self._overflow = len(ids) >= limit and loaded > 0

    def _try_send(self, delivery: Delivery) -> bool:
        try:
            self._send.send_nowait(delivery)
        except WouldBlock:
            return False
        return True

    def _forget(self, delivery: Delivery) -> None:
        self._known.discard(delivery.msg_id)
        if self._recent is not None:
            self._recent.add(delivery.msg_id)

    def _retry_later(self, delivery: Delivery) -> None:
        if len(self._waiting) >= self.plugin.memory_queue:
            self._forget(delivery)
            return
        heapq.heappush(self._waiting, (delivery.due, next(self._seq), delivery))
        if self._waiting[0][2] is delivery:
            self._wake.set()

    # ------------------------------------------------------------ one attempt

    async def attempt(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        """POST the delivery once and record the outcome (durably, then in memory)."""
        settings = self.settings
        started = time.time()
        headers = sign_headers(delivery.msg_id, int(started), delivery.body, self._keys)
        status: int | None = None
        retry_after: str | None = None
        error: str | None = None
        outcome = "success"
        try:
            async with session.post(
                settings.url,
                data=delivery.body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=settings.timeout),
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                await response.content.read(_MAX_RESPONSE_READ)
        except TimeoutError:
            outcome, error = "timeout", f"no response within {settings.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            outcome, error = "connection_error", _describe_error(exc)
        now = time.time()
        delivery.attempts += 1
        delivery.last_status_code = status
        if status is not None and not 200 <= status < 300:
            outcome = "http_error"
            error = f"HTTP {status}" + (" (3xx redirects are not followed)" if 300 <= status < 400 else "")
        delivery.last_error = error
        self._attempts[outcome].inc()
        self._results.append(error is None)
        if error is None:
            await self._store.execute(
                _UPDATE_DELIVERED, (delivery.attempts, now, status, now, delivery.msg_id)
            )
            self.last_success_at = now
            self.consecutive_failures = 0
            self._delivered.inc()
            self._latency.observe(max(0.0, now - delivery.event_time))
            self._finish(delivery)
        else:
            self.last_error, self.last_error_at = error, now
            self.consecutive_failures += 1
            await self._record_failure(delivery, status, retry_after, now)
        if delivery.done is not None:
            delivery.done.set()

    async def _record_failure(
        self, delivery: Delivery, status: int | None, retry_after: str | None, now: float
    ) -> None:
        plugin = self.plugin
        delay = retry_delay(plugin.retry_schedule, delivery.attempts, plugin.retry_jitter)
        if delay is None:
            await self._store.execute(
                _UPDATE_FAILED, (delivery.attempts, now, status, delivery.last_error, delivery.msg_id)
            )
            self._failed.inc()
            self._log.warning(
                "webhook delivery failed for good",
                endpoint=self.name,
                webhook_id=delivery.msg_id,
                attempts=delivery.attempts,
                error=delivery.last_error,
            )
            self._finish(delivery)
            return
        asked = parse_retry_after(retry_after, now)
        if asked is not None:
            delay = max(delay, min(asked, plugin.max_retry_after))
        delivery.due = now + delay
        await self._store.execute(
            _UPDATE_RETRY,
            (delivery.attempts, now, status, delivery.last_error, delivery.due, delivery.msg_id),
        )
        self._retry_later(delivery)

    def _finish(self, delivery: Delivery) -> None:
        self.depth = max(0, self.depth - 1)
        self._forget(delivery)

    # ------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        """Recent success rate, last error, queue depth; answered from memory."""
        results = self._results
        return {
            "name": self.name,
            "success_rate": (sum(results) / len(results)) if results else None,
            "recent_attempts": len(results),
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
            "queue_depth": self.depth,
            "in_flight": self.in_flight,
        }

    def update(self, settings: EndpointSettings, plugin: WebhooksSettings) -> None:
        """New settings after a config reload (URL, secrets, timeout, events)."""
        self.settings = settings
        self.plugin = plugin
        self.filter = EventFilter(settings.events)
        self._keys = settings.keys


def depths(workers: Mapping[str, EndpointWorker]) -> dict[str, int]:
    return {name: worker.depth for name, worker in workers.items()}
