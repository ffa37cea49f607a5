"""LndClient: error classification against a local gRPC server that answers with LND's
status codes and texts, argument checks, and every method against simnet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from lightningd_py.errors import LndError
from lightningd_py.lnd.client import LndClient
from lightningd_py.lnd.errors import classify, connection_reason, redact
from lightningd_py.lnd.link import Stubs
from lightningd_py.lnd.rpc import invoices_pb2_grpc, router_pb2_grpc, stateservice_pb2_grpc
from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import lightning_pb2_grpc as lnrpc_grpc

pytestmark = pytest.mark.anyio

MACAROON_HEX = "0201036c6e6402f801" + "ab" * 120


class Failing(lnrpc_grpc.LightningServicer):
    """GetInfo fails with whatever the test sets; the probe of each LND text."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.UNKNOWN
        self.details = ""
        self.delay = 0.0

    async def GetInfo(
        self, request: ln.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> ln.GetInfoResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        await context.abort(self.code, self.details)
        raise AssertionError("abort returns never")


@pytest.fixture
async def server() -> AsyncIterator[tuple[Failing, Stubs]]:
    servicer = Failing()
    srv = grpc.aio.server()
    lnrpc_grpc.add_LightningServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stubs = Stubs(
        lightning=lnrpc_grpc.LightningStub(channel),
        router=router_pb2_grpc.RouterStub(channel),
        invoices=invoices_pb2_grpc.InvoicesStub(channel),
        state=stateservice_pb2_grpc.StateStub(channel),
        channel=channel,
    )
    yield servicer, stubs
    await channel.close()
    await srv.stop(None)


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        (grpc.StatusCode.UNKNOWN, "wallet locked, unlock it to enable full RPC access", "locked"),
        (
            grpc.StatusCode.UNKNOWN,
            "the RPC server is in the process of starting up, but not yet ready to accept calls",
            "starting",
        ),
        (
            grpc.StatusCode.UNKNOWN,
            "verification failed: signature mismatch after caveat verification",
            "permission",
        ),
        (grpc.StatusCode.UNKNOWN, "permission denied", "permission"),
        (grpc.StatusCode.UNKNOWN, "expected 1 macaroon, got 0", "permission"),
        (grpc.StatusCode.UNKNOWN, "cannot get macaroon: root key with id 0 doesn't exist", "permission"),
        (grpc.StatusCode.UNKNOWN, "unable to locate invoice", "not_found"),
        (grpc.StatusCode.UNKNOWN, "there are no existing invoices", "not_found"),
        (grpc.StatusCode.NOT_FOUND, "payment not found", "not_found"),
        (grpc.StatusCode.INVALID_ARGUMENT, "amount must be positive", "invalid"),
        (grpc.StatusCode.UNKNOWN, "invalid payment request: checksum failed", "invalid"),
        (grpc.StatusCode.UNKNOWN, "unable to decode payment request", "invalid"),
        (grpc.StatusCode.UNAVAILABLE, "connection reset by peer", "unreachable"),
        (grpc.StatusCode.UNKNOWN, "insufficient local balance", "other"),
        (grpc.StatusCode.INTERNAL, "boom", "other"),
    ],
)
async def test_classification(
    server: tuple[Failing, Stubs], code: grpc.StatusCode, details: str, kind: str
) -> None:
    servicer, stubs = server
    client = LndClient.from_stubs(stubs, rpc_timeout=5)
    servicer.code, servicer.details = code, details
    with pytest.raises(LndError) as info:
        await client.get_info()
    error = info.value
    assert error.kind == kind
    assert error.code == code.name
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    if kind != "unreachable":
        assert error.details == details


async def test_deadline_exceeded_is_timeout(server: tuple[Failing, Stubs]) -> None:
    servicer, stubs = server
    servicer.delay = 2.0
    fast = LndClient.from_stubs(stubs, rpc_timeout=0.2)
    with pytest.raises(LndError) as info:
        await fast.get_info()
    assert info.value.kind == "timeout"
    assert info.value.code == "DEADLINE_EXCEEDED"


async def test_macaroon_never_in_details(server: tuple[Failing, Stubs]) -> None:
    servicer, stubs = server
    client = LndClient.from_stubs(stubs, rpc_timeout=5)
    servicer.details = f"verification failed for macaroon {MACAROON_HEX}"
    with pytest.raises(LndError) as info:
        await client.get_info()
    assert MACAROON_HEX not in info.value.details
    assert MACAROON_HEX not in str(info.value)
    assert info.value.kind == "permission"


async def test_connection_refused_is_unreachable() -> None:
    # Bind then release a port so nothing listens on it.
    probe = grpc.aio.server()
    port = probe.add_insecure_port("127.0.0.1:0")
    await probe.start()
    await probe.stop(None)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = lnrpc_grpc.LightningStub(channel)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetInfo(ln.GetInfoRequest(), timeout=5)
    finally:
        await channel.close()
    error = classify(info.value)
    assert error.kind == "unreachable"
    assert error.details == "connection refused"


async def test_closed_channel_is_unreachable(server: tuple[Failing, Stubs]) -> None:
    _, stubs = server
    client = LndClient.from_stubs(stubs, rpc_timeout=5)
    await stubs.channel.close()
    with pytest.raises(LndError) as info:
        await client.get_info()
    assert info.value.kind == "unreachable"


async def test_unconnected_client_raises_at_once() -> None:
    client = LndClient()
    assert not client.connected
    with pytest.raises(LndError) as info:
        await client.list_channels()
    assert info.value.kind == "unreachable"


def test_redact_keeps_hashes_and_payment_requests() -> None:
    payment_hash = "ab" * 32
    bolt11 = "lnbcrt10u1" + "q" * 150
    text = f"hash {payment_hash} req {bolt11}"
    assert redact(text) == text
    b64 = "AgEDbG5kAvgBAwoQ" * 10
    assert "<redacted>" in redact(f"mac {b64}")
    assert "<redacted>" in redact(f"mac {MACAROON_HEX}")


def test_connection_reason() -> None:
    long = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:10009: "
        "Failed to connect to remote host: Connection refused"
    )
    assert connection_reason(long) == "connection refused"
    assert "TLS" in connection_reason("Ssl handshake failed: SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED")
    assert connection_reason("weird") == "weird"
