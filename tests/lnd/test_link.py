"""LndLink: connection options, backoff, and the whole connect / follow-state / reconnect
cycle against simnet over TLS with macaroons."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
import structlog.testing

from lightningd_py.daemon import NodeStatus
from lightningd_py.demo import SimnetProcess, free_port
from lightningd_py.errors import LndError
from lightningd_py.lnd.link import LndLink, Stubs, backoff_delay, channel_options
from lightningd_py.lnd.rpc import lightning_pb2 as ln

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
async def _one_event_loop(anyio_backend: str) -> AsyncIterator[None]:
    """One event loop for the whole module, drained before it closes: grpc.aio delivers
    the completions of calls that ``channel.close()`` cancelled a moment later, on the
    loop that made them, and a closed loop turns them into errors in the next test."""
    yield
    await asyncio.sleep(0.2)


@dataclass(frozen=True)
class Settings:
    host: str
    tls_cert: Path | None = None
    macaroon: str | None = None
    lndconnect: str | None = None
    connect_timeout: float = 3.0
    rpc_timeout: float = 5.0
    reconnect_min: float = 0.05
    reconnect_max: float = 0.4
    keepalive_interval: float = 30.0
    max_receive_mb: int = 64


class Recorder:
    """Collects every status the link reports."""

    def __init__(self) -> None:
        self.seen: list[NodeStatus] = []
        self.changed = asyncio.Event()

    async def __call__(self, node: NodeStatus) -> None:
        self.seen.append(replace(node, extra=dict(node.extra)))
        self.changed.set()

    async def wait_for(
        self,
        predicate: Callable[[NodeStatus], bool],
        timeout: float = 10.0,
    ) -> NodeStatus:
        async with asyncio.timeout(timeout):
            while True:
                for status in self.seen:
                    if predicate(status):
                        return status
                self.changed.clear()
                # Predicates may also look at the link's counters: re-check now and then.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self.changed.wait()


class Running:
    """A link running in a task, with what on_active saw."""

    def __init__(
        self, settings: Settings, on_active: Callable[[Stubs], Awaitable[None]] | None = None
    ) -> None:
        self.status = Recorder()
        self.node = NodeStatus()
        self.link = LndLink(settings, self.node, self.status, info_interval=0.2)
        self.activations = 0
        self.cancelled = 0
        self._on_active = on_active
        self.task: asyncio.Task[None] | None = None

    async def on_active(self, stubs: Stubs) -> None:
        self.activations += 1
        try:
            if self._on_active is not None:
                await self._on_active(stubs)
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.link.run(self.on_active))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def _in_thread(fn: Callable[[], object]) -> None:
    await asyncio.to_thread(fn)


# ---------------------------------------------------------------- pure parts


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    rng = random.Random(7)
    for failures in range(12):
        ceiling = min(30.0, 0.5 * 2**failures)
        draws = [backoff_delay(failures, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0.5 <= d <= ceiling for d in draws)
        if ceiling > 1:
            assert max(draws) - min(draws) > ceiling / 4  # jitter spans the range
    assert backoff_delay(1000, 1.0, 60.0, rng) <= 60.0


def test_channel_options_follow_settings() -> None:
    options = dict(channel_options(Settings(host="h:1", keepalive_interval=45, max_receive_mb=200)))
    assert options["grpc.max_receive_message_length"] == 200 * 1024 * 1024
    assert options["grpc.keepalive_time_ms"] == 45_000
    assert options["grpc.keepalive_permit_without_calls"] == 0


def test_importing_the_link_leaves_the_environment_alone() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_SSL_CIPHER_SUITES"}
    code = "import os, lightningd_py.lnd.link; print('GRPC_SSL_CIPHER_SUITES' in os.environ)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_unreachable_reports_and_backs_off(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(host=f"127.0.0.1:{port}", macaroon="0201", reconnect_min=0.05, reconnect_max=0.4)
    async with Running(settings) as run:
        status = await run.status.wait_for(lambda s: s.state == "UNREACHABLE")
        assert os.environ.get("GRPC_SSL_CIPHER_SUITES")
        assert not status.reachable and not status.active
        assert re.fullmatch(
            rf"LND unreachable at 127\.0\.0\.1:{port}: connection refused; retrying in \d+\.\d s",
            status.detail,
        )
        await run.status.wait_for(lambda s: len(run.status.seen) >= 6, timeout=10)
        with pytest.raises(LndError) as info:
            await run.link.client.get_info()
        assert info.value.kind == "unreachable"
        assert not await run.link.wait_active(0.05)
    delays = [float(re.search(r"retrying in ([\d.]+) s", s.detail).group(1)) for s in run.status.seen]  # type: ignore[union-attr]
    assert all(0.0 <= d <= 0.4 for d in delays)
    assert run.activations == 0


async def test_missing_tls_cert_is_reported_and_retried(tmp_path: Path) -> None:
    settings = Settings(host=f"127.0.0.1:{free_port()}", tls_cert=tmp_path / "tls.cert", macaroon="0201")
    async with Running(settings) as run:
        status = await run.status.wait_for(lambda s: "lnd.tls_cert" in s.detail)
        assert status.state == "UNREACHABLE"
        assert "no such file" in status.detail


# ---------------------------------------------------------------- against simnet


def _settings(simnet: SimnetProcess, **overrides: object) -> Settings:
    base = Settings(host=simnet.grpc, tls_cert=simnet.tls_cert, macaroon=str(simnet.admin_macaroon))
    return replace(base, **overrides)  # type: ignore[arg-type]


async def _expect_active(run: Running, simnet: SimnetProcess) -> None:
    assert await run.link.wait_active(15)
    info = await run.link.client.get_info()
    assert run.node.state == "SERVER_ACTIVE"
    assert run.node.active and run.node.reachable
    assert run.node.pubkey == info.pubkey != ""
    assert run.node.detail in ("LND active", "LND is syncing to chain")
    # on_active is started right after the link reports active.
    await run.status.wait_for(lambda s: run.activations >= 1)


@pytest.mark.parametrize("form", ["path", "hex", "lndconnect", "lndconnect_without_cert"])
async def test_connects_with_each_macaroon_form(simnet: SimnetProcess, form: str) -> None:
    macaroon = simnet.admin_macaroon.read_bytes()
    der = ssl.PEM_cert_to_DER_cert(simnet.tls_cert.read_text())
    if form == "path":
        settings = _settings(simnet)
    elif form == "hex":
        settings = _settings(simnet, macaroon=macaroon.hex())
    elif form == "lndconnect":
        uri = f"lndconnect://{simnet.grpc}?cert={_b64url(der)}&macaroon={_b64url(macaroon)}"
        settings = Settings(host="127.0.0.1:1", lndconnect=uri)
    else:
        # No cert in the URI (a CA-signed node): the cert comes from lnd.tls_cert.
        uri = f"lndconnect://{simnet.grpc}?macaroon={_b64url(macaroon)}"
        settings = Settings(host="127.0.0.1:1", lndconnect=uri, tls_cert=simnet.tls_cert)
    async with Running(settings) as run:
        await _expect_active(run, simnet)
        states = [s.state for s in run.status.seen]
        assert states[-1] == "SERVER_ACTIVE"
        assert all(macaroon.hex() not in s.detail for s in run.status.seen)


async def test_wrong_macaroon_is_permission(simnet: SimnetProcess, tmp_path: Path) -> None:
    forged = bytearray(simnet.admin_macaroon.read_bytes())
    forged[-1] ^= 0xFF  # breaks the signature
    async with Running(_settings(simnet, macaroon=bytes(forged).hex())) as run:
        status = await run.status.wait_for(lambda s: s.extra.get("link_error") == "permission")
        assert status.reachable and not status.active
        assert status.detail.startswith(f"LND rejected the macaroon at {simnet.grpc}")
        assert bytes(forged).hex() not in status.detail
        with pytest.raises(LndError) as info:
            await run.link.client.get_info()
        assert info.value.kind == "permission"
        assert run.activations == 0


async def test_missing_macaroon_file_still_follows_state(simnet: SimnetProcess, tmp_path: Path) -> None:
    missing = tmp_path / "none.macaroon"
    async with Running(_settings(simnet, macaroon=str(missing))) as run:
        status = await run.status.wait_for(lambda s: "lnd.macaroon" in s.detail)
        assert str(missing) in status.detail
        assert run.activations == 0


async def test_locked_then_unlocked(tmp_path: Path) -> None:
    node = SimnetProcess(tmp_path / "simnet", args=["--locked"]).start()
    try:
        async with Running(_settings(node)) as run:
            locked = await run.status.wait_for(lambda s: s.state == "LOCKED")
            assert locked.reachable and not locked.active
            assert locked.detail == "LND wallet is locked"
            with pytest.raises(LndError) as info:
                await run.link.client.list_channels()
            assert info.value.kind == "locked"
            assert run.activations == 0
            await _in_thread(node.control.unlock)
            await _expect_active(run, node)
            order = [s.state for s in run.status.seen]
            assert order.index("LOCKED") < order.index("SERVER_ACTIVE")
            assert run.node.reconnects == 0
    finally:
        node.stop()


async def test_lock_while_active_cancels_work_and_follows(simnet: SimnetProcess) -> None:
    async with Running(_settings(simnet)) as run:
        await _expect_active(run, simnet)
        await _in_thread(simnet.control.lock)
        await run.status.wait_for(lambda s: s.state == "LOCKED" and s.reachable)
        assert run.cancelled == 1
        assert not run.link.active
        await _in_thread(simnet.control.unlock)
        await run.status.wait_for(lambda s: s.active and run.activations == 2)
        assert run.link.active


async def test_errors_of_work_cancelled_with_its_session_are_not_failures(simnet: SimnetProcess) -> None:
    """Work cancelled because LND went away can end with the errors of its tasks (an
    exception group of streams closed under them): the cancellation stands, and nothing
    says the stream processing failed."""

    async def fails_when_cancelled(stubs: Stubs) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ExceptionGroup("streams", [RuntimeError("channel closed under the reader")]) from None

    with structlog.testing.capture_logs() as logs:
        async with Running(_settings(simnet), fails_when_cancelled) as run:
            await _expect_active(run, simnet)
            await _in_thread(simnet.control.lock)
            await run.status.wait_for(lambda s: s.state == "LOCKED" and s.reachable)
            await _in_thread(simnet.control.unlock)
            await run.status.wait_for(lambda s: s.active and run.activations == 2)
    assert [e for e in logs if e["log_level"] == "error"] == []


async def test_restart_reconnects_and_rereads_the_regenerated_cert(simnet: SimnetProcess) -> None:
    seen_channels: list[int] = []

    async def use_stubs(stubs: Stubs) -> None:
        reply = await stubs.lightning.ListChannels(ln.ListChannelsRequest(), timeout=5)
        seen_channels.append(len(reply.channels))

    old_cert = simnet.tls_cert.read_bytes()
    async with Running(_settings(simnet), use_stubs) as run:
        await _expect_active(run, simnet)
        await run.status.wait_for(lambda s: len(seen_channels) == 1)
        await _in_thread(lambda: simnet.control.restart(down_seconds=0.5, regenerate_tls=True))
        down = await run.status.wait_for(lambda s: s.state == "UNREACHABLE")
        assert not down.active
        assert "retrying in" in down.detail
        await run.status.wait_for(lambda s: s.active and run.activations == 2, timeout=20)
        assert simnet.tls_cert.read_bytes() != old_cert
        assert run.cancelled == 1
        assert run.node.reconnects >= 1
        assert len(seen_channels) == 2
        await run.link.client.get_info()


async def test_process_restart_on_same_port(tmp_path: Path) -> None:
    port = free_port()
    node = SimnetProcess(tmp_path / "simnet", args=["--grpc-port", str(port)]).start()
    try:
        async with Running(_settings(node)) as run:
            await _expect_active(run, node)
            await _in_thread(node.stop)
            await run.status.wait_for(lambda s: s.state == "UNREACHABLE" and "connection refused" in s.detail)
            with pytest.raises(LndError) as info:
                await run.link.client.get_info()
            assert info.value.kind == "unreachable"
            await _in_thread(node.start)
            await run.status.wait_for(lambda s: s.active and run.activations == 2, timeout=20)
            await _expect_active(run, node)
    finally:
        node.stop()


async def test_stubs_state_channel_has_no_macaroon(simnet: SimnetProcess) -> None:
    async with Running(_settings(simnet)) as run:
        await _expect_active(run, simnet)
        stubs = run.link.stubs
        assert stubs is not None and stubs.state_channel is not None
        assert stubs.state_channel is not stubs.channel
        assert "redacted" not in repr(stubs)  # no credentials in it at all
        assert isinstance(stubs.channel, grpc.aio.Channel)


async def test_lnd_without_state_service_is_named(tmp_path: Path) -> None:
    from lightningd_py.simnet.tls import ensure_tls

    cert, key = ensure_tls(tmp_path)
    server = grpc.aio.server()
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    )
    await server.start()
    try:
        settings = Settings(host=f"127.0.0.1:{port}", tls_cert=cert, macaroon="0201")
        async with Running(settings) as run:
            status = await run.status.wait_for(lambda s: "State service" in s.detail)
            assert "LND 0.13 or newer is required" in status.detail
    finally:
        await server.stop(None)
