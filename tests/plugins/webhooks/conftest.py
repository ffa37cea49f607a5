"""Fixtures for the webhooks plugin's tests: real HTTP receivers on 127.0.0.1 and the
plugin running in the daemon's own plugin host, on a real database and journal.

The receivers verify nothing themselves: tests verify what they recorded with the
``standardwebhooks`` library, independently of the plugin's signing code.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import lightningd_py.plugins.webhooks as webhooks_plugin
import pytest
import tomli_w
from aiohttp import web
from lightningd_py.plugins.webhooks.signing import generate_secret
from prometheus_client import CollectorRegistry

from lightningd_py.config import load_config
from lightningd_py.daemon import NodeStatus
from lightningd_py.events import Event
from lightningd_py.journal import Journal
from lightningd_py.pluginhost import PluginHost, create_plugin_manager
from lightningd_py.store import Store

# A retry schedule compressed from hours to fractions of a second.
FAST_SCHEDULE = [0, 0.2, 0.4, 0.6]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server recording every POST; ``behaviour`` decides the answer."""

    url: str = ""
    attempts: list[Received] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    # Returns (status, headers); may sleep to play a slow endpoint.
    behaviour: Callable[[Received], Awaitable[tuple[int, dict[str, str]]]] | None = None
    arrived: anyio.Event | None = None
    _runner: web.AppRunner | None = None
    _port: int = 0

    async def _handle(self, request: web.Request) -> web.Response:
        item = Received(dict(request.headers), await request.read(), time.time())
        self.attempts.append(item)
        status, headers = 200, {}
        if self.behaviour is not None:
            status, headers = await self.behaviour(item)
        if 200 <= status < 300:
            self.received.append(item)
        if self.arrived is not None:
            self.arrived.set()
        self.arrived = anyio.Event()
        return web.Response(status=status, headers=headers, text="ok")

    async def start(self, port: int = 0) -> None:
        self.arrived = anyio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self._port)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self._port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, within: float = 10.0) -> list[Received]:
        """Wait until ``count`` successful deliveries arrived."""
        with anyio.fail_after(within):
            while len(self.received) < count:
                assert self.arrived is not None, "the receiver is not started"
                await self.arrived.wait()
        return self.received


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def make() -> Receiver:
        receiver = Receiver()
        await receiver.start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        await receiver.stop()


def endpoint(name: str, receiver: Receiver, events: Sequence[str], **extra: Any) -> dict[str, Any]:
    """One ``[[plugins.webhooks.endpoints]]`` table with a fresh secret."""
    return {"name": name, "url": receiver.url, "secret": generate_secret(), "events": list(events), **extra}


@dataclass
class RunningDaemon:
    host: PluginHost
    journal: Journal
    registry: CollectorRegistry

    @property
    def daemon(self) -> Any:
        return self.host.runtimes["webhooks"].daemon

    @property
    def service(self) -> webhooks_plugin.WebhookService:
        return webhooks_plugin.service_for(self.daemon)

    async def append(self, events: Sequence[Event]) -> list[int]:
        return await self.journal.append(list(events))

    async def settled(self, within: float = 10.0) -> None:
        """Wait until no delivery is pending and every outcome is committed."""
        await eventually(lambda: all(w.depth == 0 for w in self.service.workers.values()), within)
        await self.daemon.store.flush()


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        # Polling: the state watched belongs to the plugin, which exposes no event for it.
        while not predicate():
            await anyio.sleep(0.01)


def write_config(state_dir: Path, table: dict[str, Any]) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    cert = state_dir / "tls.cert"
    cert.write_text("not used: these tests never reach LND\n")
    path = state_dir / "config.toml"
    doc = {
        "core": {"state_dir": str(state_dir), "hook_timeout": 30.0},
        "lnd": {"tls_cert": str(cert), "macaroon": "00" * 32},
        "plugins": {"webhooks": table},
    }
    path.write_text(tomli_w.dumps(doc))
    return path


@asynccontextmanager
async def run_plugin(
    state_dir: Path, table: dict[str, Any], others: dict[str, object] | None = None, *, ready: bool = True
) -> AsyncIterator[RunningDaemon]:
    """The webhooks plugin (and ``others``, plugin objects by name) in the daemon's plugin
    host, started the way the supervisor starts plugins (migrations, startup, metrics,
    journal worker, services)."""
    config = load_config(write_config(state_dir, table), {"webhooks": webhooks_plugin.WebhooksSettings})
    pm = create_plugin_manager(entry_points=[], extra={"webhooks": webhooks_plugin, **(others or {})})
    store = Store(state_dir / "lightningd-py.sqlite")
    store.open()
    journal = Journal(store)
    journal.open()
    registry = CollectorRegistry(auto_describe=True)
    # LND stands in as connected and caught up (what the stream readers report).
    node = NodeStatus(state="SERVER_ACTIVE", reachable=True, active=True, extra={"streams_ready": ready})
    host = PluginHost(
        config=config,
        pm=pm,
        store=store,
        journal=journal,
        registry=registry,
        node=node,
        lnd=None,  # type: ignore[arg-type]
    )
    for name, migrations in host.hooks.each_sync("ldp_migrations"):
        store.migrate(name, migrations or [])
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        await host.hooks.each("ldp_startup")
        assert host.runtimes["webhooks"].errors == 0, host.runtimes["webhooks"].last_error
        host.hooks.each_sync("ldp_register_metrics", registry=registry)
        host.prepare_workers()
        tg.start_soon(host.run_worker, "webhooks")
        for _plugin, services in host.hooks.each_sync("ldp_background_tasks"):
            for _name, fn in services or ():
                tg.start_soon(fn)
        try:
            yield RunningDaemon(host, journal, registry)
        finally:
            tg.cancel_scope.cancel()
    with anyio.CancelScope(shield=True):
        await host.hooks.each("ldp_shutdown")
        await store.close()


class ThreadedReceiver:
    """A ``Receiver`` on its own event loop in a thread, for tests that drive the
    daemon as a process (synchronous fixtures). ``status`` is the answer to give."""

    def __init__(self) -> None:
        self.status = 200
        self.receiver = Receiver()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def _answer(self, item: Received) -> tuple[int, dict[str, str]]:
        return self.status, {}

    def start(self, port: int = 0) -> ThreadedReceiver:
        self.receiver.behaviour = self._answer
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.receiver.start(port))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def received(self) -> list[Received]:
        return list(self.receiver.received)

    @property
    def attempts(self) -> list[Received]:
        return list(self.receiver.attempts)


@pytest.fixture
def threaded_receivers() -> Iterator[Callable[[], ThreadedReceiver]]:
    started: list[ThreadedReceiver] = []

    def make() -> ThreadedReceiver:
        receiver = ThreadedReceiver().start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()
