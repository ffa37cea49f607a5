"""The connection to LND: ``LndLink``.

One gRPC channel (TLS + macaroon) carries every call and stream; a second channel
without the macaroon follows LND's State service, which needs none, so a locked or
starting LND, or a macaroon that cannot be read yet, is still reported precisely.
Only when LND says SERVER_ACTIVE (and answers GetInfo with our macaroon) does the link
hand the stubs to ``on_active``; when the state stream ends (LND shutting down ends it
with status OK), fails, or leaves SERVER_ACTIVE, that work is cancelled, the channels
are closed and the link reconnects with capped exponential backoff and full jitter,
reading tls.cert and the macaroon afresh (LND regenerates tls.cert).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import grpc
import structlog

from ..daemon import NodeStatus
from ..errors import ConfigError, LndError
from .client import LndClient
from .credentials import LndSettingsLike, load_macaroon, load_tls_cert, resolve_host
from .errors import classify
from .rpc import invoices_pb2_grpc, router_pb2_grpc, stateservice_pb2, stateservice_pb2_grpc
from .rpc import lightning_pb2_grpc as lnrpc_grpc

__all__ = ["LND_CIPHER_SUITES", "LndLink", "Stubs", "backoff_delay", "channel_options"]

# Seconds a session's clean-up may take to cancel its calls and close its channels.
CLOSE_TIMEOUT = 5.0
LND_CIPHER_SUITES = (
    "HIGH+ECDSA:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"
)
"""gRPC's default TLS 1.2 suites lack the ECDSA ones LND's self-signed certificate
needs; the RSA ones stay for nodes behind a CA-signed certificate."""

log = structlog.get_logger("lightningd_py.lnd")

_STATE_DETAIL = {
    "NON_EXISTING": "LND has no wallet yet (create one with lncli create)",
    "LOCKED": "LND wallet is locked",
    "UNLOCKED": "LND is starting",
    "RPC_ACTIVE": "LND is starting",
    "WAITING_TO_START": "LND is starting",
}


@dataclass(frozen=True, slots=True)
class Stubs:
    """The gRPC stubs of one connection to LND.

    :ivar lightning: ``lnrpc.Lightning`` (with the macaroon).
    :ivar router: ``routerrpc.Router`` (with the macaroon).
    :ivar invoices: ``invoicesrpc.Invoices`` (with the macaroon).
    :ivar state: ``lnrpc.State`` (on ``state_channel``, no macaroon).
    :ivar channel: the channel the macaroon-bearing stubs use.
    :ivar state_channel: the channel ``state`` uses.
    """

    lightning: lnrpc_grpc.LightningStub
    router: router_pb2_grpc.RouterStub
    invoices: invoices_pb2_grpc.InvoicesStub
    state: stateservice_pb2_grpc.StateStub
    channel: grpc.aio.Channel
    state_channel: grpc.aio.Channel | None = None

    def __repr__(self) -> str:
        return "Stubs(lightning, router, invoices, state)"


class _MacaroonAuth:
    """Adds the ``macaroon`` header (hex) to every call.

    Interceptors rather than call credentials: grpc runs a credentials plugin on a new
    thread for every call, which costs a third of a unary call's time.
    """

    def __init__(self, macaroon: bytes) -> None:
        self._metadata = (("macaroon", macaroon.hex()),)

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """One interceptor per call kind (grpc files each interceptor under one kind only)."""
        return [
            _UnaryUnaryMacaroon(self),
            _UnaryStreamMacaroon(self),
            _StreamUnaryMacaroon(self),
            _StreamStreamMacaroon(self),
        ]

    def __repr__(self) -> str:
        return "_MacaroonAuth(<redacted>)"


class _UnaryUnaryMacaroon(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, auth: _MacaroonAuth) -> None:
        self._auth = auth

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._auth.details(details), request)


class _UnaryStreamMacaroon(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, auth: _MacaroonAuth) -> None:
        self._auth = auth

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._auth.details(details), request)


class _StreamUnaryMacaroon(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, auth: _MacaroonAuth) -> None:
        self._auth = auth

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._auth.details(details), requests)


class _StreamStreamMacaroon(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, auth: _MacaroonAuth) -> None:
        self._auth = auth

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._auth.details(details), requests)


def channel_options(settings: LndSettingsLike) -> list[tuple[str, Any]]:
    """gRPC channel options for LND: a receive limit LND's replies fit in, and
    keepalive pings no more often than LND's enforcement policy allows, only while
    calls are open."""
    return [
        ("grpc.max_receive_message_length", int(settings.max_receive_mb) * 1024 * 1024),
        ("grpc.keepalive_time_ms", int(max(10.0, settings.keepalive_interval) * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # Keep pinging an idle but open stream (the State stream), or a dead peer goes unseen.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.primary_user_agent", "lightningd-py"),
    ]


def backoff_delay(failures: int, minimum: float, maximum: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt ``failures + 1``: capped exponential
    backoff with full jitter, drawn from [minimum, min(maximum, minimum * 2**failures)]."""
    low = max(0.05, minimum)
    high = max(low, min(maximum, low * 2 ** min(failures, 32)))
    return (rng or random).uniform(low, high)


class _SessionEnd(Exception):
    """Why a connection ended: a sentence and the LndError kind (or "config")."""

    def __init__(self, detail: str, kind: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.kind = kind
        self.was_active = False
        self.was_reachable = False


class LndLink:
    """Keeps a connection to LND and runs ``on_active`` while LND is SERVER_ACTIVE.

    :param settings: the ``[lnd]`` settings (``lightningd_py.config.LndSettings``).
    :param node: the status object to keep up to date.
    :param on_status: awaited with ``node`` after every change.
    :param info_interval: seconds between GetInfo refreshes while active (chain sync).
    :param rng: the random source for backoff jitter.

    ``node.extra["link_error"]`` holds the kind of the failure that ended the last
    connection (``"unreachable"``, ``"permission"``, ``"config"``, ...), ``""`` once a
    connection is up again.
    """

    def __init__(
        self,
        settings: LndSettingsLike,
        node: NodeStatus | None = None,
        on_status: Callable[[NodeStatus], Awaitable[None]] | None = None,
        *,
        info_interval: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self.node = node if node is not None else NodeStatus()
        self._on_status = on_status
        self._info_interval = info_interval
        self._rng = rng or random.Random()
        self._client = LndClient(None, settings.rpc_timeout, unavailable=self._unavailable_error)
        self._stubs: Stubs | None = None
        self._active = asyncio.Event()
        self._error_kind = ""
        self._ever_reachable = False
        self._host = settings.host

    # ------------------------------------------------------------ public

    @property
    def client(self) -> LndClient:
        """Typed calls to LND; they raise ``LndError`` at once while not active."""
        return self._client

    @property
    def stubs(self) -> Stubs | None:
        """The current connection's stubs while active, else None."""
        return self._stubs

    @property
    def active(self) -> bool:
        """Whether LND is SERVER_ACTIVE and ``on_active`` runs."""
        return self._active.is_set()

    async def wait_active(self, timeout: float | None = None) -> bool:
        """Wait until LND is SERVER_ACTIVE and ``on_active`` has been started;
        False when ``timeout`` seconds pass first."""
        try:
            async with asyncio.timeout(timeout):
                await self._active.wait()
        except TimeoutError:
            return False
        return True

    async def run(self, on_active: Callable[[Stubs], Awaitable[None]]) -> None:
        """Connect, follow LND's state and reconnect, until cancelled."""
        # Read by gRPC core when the first TLS channel is created; a user's own value wins.
        os.environ.setdefault("GRPC_SSL_CIPHER_SUITES", LND_CIPHER_SUITES)
        failures = 0
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._session(on_active)
                    end = _SessionEnd("LND closed the connection", "unreachable")
                except _SessionEnd as exc:
                    end = exc
                except Exception as exc:
                    # A bug here must not end the link: log it and retry like any failure.
                    log.error("lnd link failed; reconnecting", exc_info=exc)
                    end = _SessionEnd(f"internal error: {type(exc).__name__}", "other")
                # Backoff grows over consecutive failures only: a connection that worked,
                # or stayed up (e.g. LND locked for a while), starts the sequence afresh.
                lasted = time.monotonic() - started
                if end.was_active or (end.was_reachable and lasted >= self._settings.reconnect_max):
                    failures = 0
                delay = backoff_delay(
                    failures, self._settings.reconnect_min, self._settings.reconnect_max, self._rng
                )
                failures += 1
                await self._note_end(end, delay)
                await asyncio.sleep(delay)
        finally:
            self._client.attach(None)
            self._stubs = None
            self._active.clear()

    # ------------------------------------------------------------ status

    def _unavailable_error(self) -> LndError:
        node = self.node
        if not node.reachable:
            return LndError("UNAVAILABLE", node.detail, "unreachable")
        if self._error_kind == "permission":
            return LndError("UNAVAILABLE", node.detail, "permission")
        if node.state in ("LOCKED", "NON_EXISTING"):
            return LndError("UNAVAILABLE", node.detail, "locked")
        return LndError("UNAVAILABLE", node.detail, "starting")

    async def _update(self, **changes: Any) -> None:
        node = self.node
        changed = {k: v for k, v in changes.items() if getattr(node, k) != v}
        if not changed:
            return
        for key, value in changed.items():
            setattr(node, key, value)
        node.since = time.time()
        node.extra["link_error"] = self._error_kind
        log.info(
            "lnd status",
            state=node.state,
            reachable=node.reachable,
            active=node.active,
            detail=node.detail,
        )
        if self._on_status is not None:
            try:
                await self._on_status(node)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("on_status callback failed", exc_info=exc)

    async def _note_end(self, end: _SessionEnd, delay: float) -> None:
        self._error_kind = end.kind
        retry = f"; retrying in {delay:.1f} s"
        if end.kind in ("unreachable", "timeout", "config"):
            await self._update(
                state="UNREACHABLE", reachable=False, active=False, detail=f"{end.detail}{retry}"
            )
        else:
            await self._update(active=False, detail=f"{end.detail}{retry}")
        log.warning("lnd disconnected", kind=end.kind, reason=end.detail, retry_in=round(delay, 2))

    # ------------------------------------------------------------ one connection

    async def _session(self, on_active: Callable[[Stubs], Awaitable[None]]) -> None:
        """One connection from connect to disconnect. Raises ``_SessionEnd`` saying why
        it ended and whether it had reached on_active."""
        settings = self._settings
        try:
            self._host = host = resolve_host(settings)
            cert = load_tls_cert(settings)
        except ConfigError as exc:
            raise _SessionEnd(str(exc), "config") from None
        macaroon_error: ConfigError | None = None
        macaroon = b""
        try:
            macaroon = load_macaroon(settings)
        except ConfigError as exc:
            macaroon_error = exc
        tls = grpc.ssl_channel_credentials(root_certificates=cert)
        options = channel_options(settings)
        state_channel = grpc.aio.secure_channel(host, tls, options=options)
        channel = (
            grpc.aio.secure_channel(
                host, tls, options=options, interceptors=_MacaroonAuth(macaroon).interceptors()
            )
            if macaroon_error is None
            else None
        )
        del macaroon
        tasks: list[asyncio.Task[None]] = []
        ended: asyncio.Future[_SessionEnd] = asyncio.get_running_loop().create_future()
        activated = reachable = False
        try:
            state_stub = stateservice_pb2_grpc.StateStub(state_channel)
            try:
                first = await state_stub.GetState(
                    stateservice_pb2.GetStateRequest(), timeout=settings.connect_timeout
                )
            except (grpc.RpcError, grpc.aio.UsageError) as exc:
                raise self._end_from(classify(exc)) from None
            reachable = True
            if self._ever_reachable:
                self.node.reconnects += 1
            self._ever_reachable = True
            self._error_kind = ""
            log.info("lnd connected", host=host)
            await self._on_state(_state_name(first.state))

            def finish(end: _SessionEnd) -> None:
                if not ended.done():
                    ended.set_result(end)

            async def follow() -> None:
                nonlocal activated
                call = state_stub.SubscribeState(stateservice_pb2.SubscribeStateRequest())
                try:
                    async for message in call:
                        name = _state_name(message.state)
                        if name != "SERVER_ACTIVE":
                            if activated:
                                finish(_SessionEnd(f"LND left SERVER_ACTIVE (now {name})", "unreachable"))
                                return
                            await self._on_state(name)
                            continue
                        if activated:
                            continue
                        if channel is None:
                            assert macaroon_error is not None
                            finish(_SessionEnd(str(macaroon_error), "permission"))
                            return
                        stubs = Stubs(
                            lightning=lnrpc_grpc.LightningStub(channel),
                            router=router_pb2_grpc.RouterStub(channel),
                            invoices=invoices_pb2_grpc.InvoicesStub(channel),
                            state=state_stub,
                            channel=channel,
                            state_channel=state_channel,
                        )
                        await self._activate(stubs)
                        activated = True
                        tasks.append(asyncio.create_task(run_active(stubs), name="lnd-on-active"))
                        tasks.append(asyncio.create_task(refresh_info(), name="lnd-getinfo"))
                        self._active.set()
                    finish(
                        _SessionEnd(f"LND at {host} closed the connection (shutting down?)", "unreachable")
                    )
                except (grpc.RpcError, grpc.aio.UsageError) as exc:
                    finish(self._end_from(classify(exc)))
                except _SessionEnd as exc:
                    finish(exc)
                finally:
                    call.cancel()

            async def run_active(stubs: Stubs) -> None:
                try:
                    await on_active(stubs)
                except LndError as exc:
                    finish(self._end_from(exc))
                except Exception as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # Errors of work cancelled with its session (streams closed under
                        # it): the cancellation stands.
                        log.debug("on_active ended with errors while cancelled", error=repr(exc))
                        raise asyncio.CancelledError from exc
                    log.error("on_active failed; reconnecting", exc_info=exc)
                    finish(_SessionEnd(f"stream processing failed: {type(exc).__name__}: {exc}", "other"))

            async def refresh_info() -> None:
                while True:
                    await asyncio.sleep(self._info_interval)
                    try:
                        info = await self._client.get_info()
                    except LndError as exc:
                        log.debug("GetInfo refresh failed", kind=exc.kind, error=exc.details)
                        continue
                    await self._update(
                        synced_to_chain=info.synced_to_chain,
                        detail=_active_detail(info.synced_to_chain),
                        alias=info.alias,
                    )

            tasks.append(asyncio.create_task(follow(), name="lnd-state"))
            raise await ended
        except _SessionEnd as end:
            end.was_active = activated
            end.was_reachable = reachable
            raise
        finally:
            self._client.attach(None)
            self._stubs = None
            self._active.clear()
            for task in tasks:
                task.cancel()
            # Shielded: on shutdown (a cancelled task group) the channels must still be
            # closed, or gRPC's poller calls into the event loop after it is closed.
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + CLOSE_TIMEOUT):
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                if channel is not None:
                    await channel.close()
                await state_channel.close()

    def _end_from(self, error: LndError) -> _SessionEnd:
        if error.kind == "unreachable":
            return _SessionEnd(f"LND unreachable at {self._host}: {error.details}", "unreachable")
        if error.kind == "permission":
            return _SessionEnd(f"LND rejected the macaroon at {self._host}: {error.details}", "permission")
        if error.code == "UNIMPLEMENTED":
            return _SessionEnd(
                f"LND at {self._host} has no State service (LND 0.13 or newer is required)", "other"
            )
        if error.kind == "timeout":
            return _SessionEnd(f"LND at {self._host} did not answer in time", "timeout")
        return _SessionEnd(f"LND at {self._host}: {error.details}", error.kind)

    async def _on_state(self, name: str) -> None:
        if name == "SERVER_ACTIVE":
            # Active is reported once GetInfo with our macaroon has succeeded (_activate).
            await self._update(
                state=name, reachable=True, active=False, detail="LND is active; checking the macaroon"
            )
            return
        await self._update(
            state=name, reachable=True, active=False, detail=_STATE_DETAIL.get(name, f"LND is {name}")
        )

    async def _activate(self, stubs: Stubs) -> None:
        probe = LndClient(stubs, self._settings.rpc_timeout)
        try:
            info = await probe.get_info()
        except LndError as exc:
            raise self._end_from(exc) from None
        self._stubs = stubs
        self._client.attach(stubs)
        await self._update(
            state="SERVER_ACTIVE",
            reachable=True,
            active=True,
            synced_to_chain=info.synced_to_chain,
            pubkey=info.pubkey,
            alias=info.alias,
            detail=_active_detail(info.synced_to_chain),
        )


def _state_name(value: int) -> str:
    try:
        return str(stateservice_pb2.WalletState.Name(value))
    except ValueError:
        return str(value)


def _active_detail(synced: bool) -> str:
    return "LND active" if synced else "LND is syncing to chain"
