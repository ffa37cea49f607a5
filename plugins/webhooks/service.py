"""The webhooks plugin at run time: turns journal events into outbox rows and runs one
delivery worker per endpoint."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import msgspec

from lightningd_py import __version__
from lightningd_py.api import Event, NodeStateEvent

from .catalogue import TEST_EVENT, default_payload, iso_timestamp, webhook_event_name
from .delivery import EndpointWorker, depths
from .metrics import WebhookMetrics
from .outbox import INSERT_SQL, Delivery, delivery_from_row
from .signing import message_id

if TYPE_CHECKING:
    from lightningd_py.api import Daemon, StoreHandle

    from .settings import EndpointSettings, WebhooksSettings

__all__ = ["WebhookService"]

_json = msgspec.json.Encoder()
_REACHABLE_KEY = "node.reachable"
_HISTORY_KEY = "history_until"
_SELECT_ONE = (
    "SELECT msg_id, endpoint, event_type, event_time, body, attempts, next_attempt_at "
    "FROM webhooks_deliveries WHERE id = ?"
)
_PRUNE_EVERY = 3600.0
# NodeStatus.extra key the LND stream readers set once every stream caught up.
_STREAMS_READY = "streams_ready"


class WebhookService:
    """Everything the plugin keeps for one daemon.

    :ivar workers: one delivery worker per enabled endpoint, by name.
    """

    def __init__(self, daemon: Daemon, settings: WebhooksSettings) -> None:
        self._daemon = daemon
        self.settings = settings
        self.workers: dict[str, EndpointWorker] = {}
        self.metrics = WebhookMetrics(lambda: depths(self.workers))
        self._session: aiohttp.ClientSession | None = None
        self._reachable: bool | None = None
        # Journal id of the last event of the history (see _is_history); None until then.
        self.history_until: int | None = None
        self._reconfigured = anyio.Event()
        for ep in settings.endpoints:
            if ep.enabled:
                self._add_worker(ep)

    @property
    def store(self) -> StoreHandle:
        return self._daemon.store

    def _add_worker(self, ep: EndpointSettings) -> None:
        self.workers[ep.name] = EndpointWorker(
            ep, self.settings, self._daemon.store, self.metrics, self._daemon.log
        )

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open the HTTP client and load what a previous run left pending."""
        # One pooled client for every endpoint: keep-alive connections are reused across
        # deliveries; per-endpoint concurrency is bounded by the workers, not the pool.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            headers={
                "User-Agent": f"lightningd-py/{__version__} (webhooks)",
                "Content-Type": "application/json",
            },
            raise_for_status=False,
        )
        rows = await self._daemon.store.fetchall("SELECT key, value FROM webhooks_state")
        state = {r["key"]: r["value"] for r in rows}
        if _REACHABLE_KEY in state:
            self._reachable = state[_REACHABLE_KEY] == "true"
        if _HISTORY_KEY in state:
            self.history_until = int(state[_HISTORY_KEY])
        elif self._daemon.node.extra.get(_STREAMS_READY):
            await self._end_history()
        for worker in self.workers.values():
            await worker.load()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """The delivery service: every endpoint's worker, rebuilt on reconfiguration."""
        while True:
            async with anyio.create_task_group() as tg:
                for worker in self.workers.values():
                    tg.start_soon(worker.run, self._require_session())
                await self._reconfigured.wait()
                self._reconfigured = anyio.Event()
                tg.cancel_scope.cancel()
            # Fresh workers reload the backlog from the outbox, in-flight attempts included.
            self.workers = {}
            for ep in self.settings.endpoints:
                if ep.enabled:
                    self._add_worker(ep)
            for worker in self.workers.values():
                await worker.load()

    async def prune(self) -> None:
        """Delete delivered rows older than the retention period, hourly."""
        while True:
            cutoff = time.time() - self.settings.retention_days * 86400
            await self._daemon.store.execute(
                "DELETE FROM webhooks_deliveries WHERE status = 'delivered' AND delivered_at < ?", (cutoff,)
            )
            await anyio.sleep(_PRUNE_EVERY)

    def reload(self, settings: WebhooksSettings) -> None:
        """Apply new settings. URL, secrets, timeout and events change in place, so a
        secret rotation never interrupts delivery; adding, removing or resizing endpoints
        rebuilds the delivery workers, which reload their backlog from the outbox."""
        self.settings = settings
        wanted = {ep.name: ep for ep in settings.endpoints if ep.enabled}
        rebuild = set(wanted) != set(self.workers)
        for name, ep in wanted.items():
            worker = self.workers.get(name)
            if worker is None:
                continue
            if (
                ep.concurrency != worker.settings.concurrency
                or settings.memory_queue != worker.plugin.memory_queue
            ):
                rebuild = True
            worker.update(ep, settings)
        if rebuild:
            self._reconfigured.set()

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the webhooks plugin has not started")
        return self._session

    # ------------------------------------------------------------ events -> outbox

    def _is_history(self, event: Event) -> bool:
        """Whether the event is part of the node's history learnt while the daemon first
        caught up with LND after this plugin was enabled (every existing invoice,
        channel and payment): recorded by the daemon, never pushed to endpoints."""
        return self.history_until is None or event.id <= self.history_until

    async def _end_history(self) -> None:
        """Everything journaled so far is history (called once, when LND first caught up)."""
        if self.history_until is not None:
            return
        self.history_until = self._daemon.journal.last_id
        await self._daemon.store.execute(
            "INSERT OR IGNORE INTO webhooks_state (key, value) VALUES (?, ?)",
            (_HISTORY_KEY, str(self.history_until)),
        )

    async def watch_first_sync(self) -> None:
        """Mark the end of the history once LND's streams first caught up. The daemon
        exposes that as state (``node.extra``), not as an event: look every 10 ms (a
        live event journaled in those 10 ms after the first catch-up counts as history)."""
        while self.history_until is None:
            if self._daemon.node.extra.get(_STREAMS_READY):
                await self._end_history()
                return
            await anyio.sleep(0.01)

    async def handle_events(self, events: Iterable[Event]) -> None:
        """Write one outbox row per endpoint that wants each event of a run (one
        statement for the run), then hand the deliveries to the workers. Idempotent: a
        replayed event finds its rows."""
        rows: list[tuple[Any, ...]] = []
        offers: list[tuple[EndpointWorker, Delivery]] = []
        now = time.time()
        for event in events:
            previously = self._reachable
            if isinstance(event, NodeStateEvent) and event.reachable != previously:
                self._reachable = event.reachable
                await self._daemon.store.execute(
                    "INSERT INTO webhooks_state (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (_REACHABLE_KEY, "true" if event.reachable else "false"),
                )
            name = webhook_event_name(event, previously)
            if name is None or self._is_history(event):
                continue
            targets = [worker for worker in self.workers.values() if name in worker.filter]
            if not targets:
                continue
            body = await self._body(event, name)
            for worker in targets:
                delivery = Delivery(
                    msg_id=message_id(f"event:{event.id}", worker.name),
                    endpoint=worker.name,
                    event_type=name,
                    event_time=event.time,
                    body=body,
                    due=now,
                )
                rows.append((delivery.msg_id, event.id, worker.name, name, event.time, body, now, now))
                offers.append((worker, delivery))
        if not rows:
            return
        await self._daemon.store.executemany(INSERT_SQL, rows)
        for worker, delivery in offers:
            worker.offer(delivery, new=True)

    async def _body(self, event: Event, name: str) -> bytes:
        payload = default_payload(event)
        data: Mapping[str, Any] = payload
        custom = await self._daemon.hooks.first("ldp_webhook_payload", event=event, payload=payload)
        if custom is not None:
            data = custom
        envelope = {"type": name, "timestamp": iso_timestamp(event.time), "data": data}
        try:
            return _json.encode(envelope)
        except (TypeError, msgspec.EncodeError) as exc:
            self._daemon.log.error(
                "ldp_webhook_payload returned data that is not JSON; sending the default payload",
                event_id=event.id,
                error=str(exc),
            )
            envelope["data"] = payload
            return _json.encode(envelope)

    # ------------------------------------------------------------ API operations

    async def send_test(self, endpoint: str, wait: float) -> dict[str, Any]:
        """Queue a ``webhook.test`` delivery to one endpoint and wait up to ``wait``
        seconds for its first attempt. Returns the delivery's row id and webhook-id."""
        worker = self.workers[endpoint]
        now = time.time()
        msg_id = message_id(f"test:{uuid.uuid4()}", endpoint)
        body = _json.encode(
            {
                "type": TEST_EVENT,
                "timestamp": iso_timestamp(now),
                "data": {"endpoint": endpoint, "message": "a test event sent from lightningd-py"},
            }
        )
        delivery = Delivery(msg_id, endpoint, TEST_EVENT, now, body, due=now, done=anyio.Event())
        row_id = await self._daemon.store.write(
            lambda conn: (
                conn.execute(INSERT_SQL, (msg_id, None, endpoint, TEST_EVENT, now, body, now, now)).lastrowid
            )
        )
        worker.offer(delivery, new=True)
        with anyio.move_on_after(wait):
            await delivery.done.wait()  # type: ignore[union-attr]
        return {"id": row_id, "webhook_id": msg_id}

    async def redeliver(self, row_id: int) -> str:
        """Put a delivered or failed delivery back in the queue with a fresh retry
        schedule and the same webhook-id, so a receiver that already has it can tell.

        :return: ``"queued"``, ``"not_found"`` (no such delivery) or ``"no_endpoint"``
            (its endpoint is no longer configured or is disabled).
        """
        now = time.time()
        workers = self.workers

        def reset(conn: sqlite3.Connection) -> tuple[sqlite3.Row | None, bool]:
            row = conn.execute(
                "SELECT endpoint, status FROM webhooks_deliveries WHERE id = ?", (row_id,)
            ).fetchone()
            if row is None or row["endpoint"] not in workers:
                return row, False
            was_pending = row["status"] == "pending"
            if was_pending:
                # Already queued: its schedule continues (a row left only in the outbox is
                # offered below).
                return conn.execute(_SELECT_ONE, (row_id,)).fetchone(), True
            conn.execute(
                "UPDATE webhooks_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, "
                "delivered_at = NULL WHERE id = ?",
                (now, row_id),
            )
            return conn.execute(_SELECT_ONE, (row_id,)).fetchone(), was_pending

        row, was_pending = await self._daemon.store.write(reset)
        if row is None:
            return "not_found"
        worker = self.workers.get(row["endpoint"])
        if worker is None:
            return "no_endpoint"
        if not worker.holds(row["msg_id"]):
            worker.offer(delivery_from_row(row), new=not was_pending)
        return "queued"
