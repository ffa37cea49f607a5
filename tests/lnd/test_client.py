"""LndClient: error classification against a local gRPC server that answers with LND's
status codes and texts, argument checks, and every method against simnet."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from lightningd_py.daemon import NodeStatus
from lightningd_py.demo import SimnetProcess
from lightningd_py.errors import LndError
from lightningd_py.lnd.client import LndClient
from lightningd_py.lnd.errors import classify, connection_reason, redact
from lightningd_py.lnd.link import LndLink, Stubs
from lightningd_py.lnd.rpc import invoices_pb2_grpc, router_pb2_grpc, stateservice_pb2_grpc
from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import lightning_pb2_grpc as lnrpc_grpc
from lightningd_py.lnd.types import Payment

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


async def test_channel_closed_during_a_call_is_unreachable_not_cancelled(
    server: tuple[Failing, Stubs],
) -> None:
    servicer, stubs = server
    servicer.delay = 3.0
    client = LndClient.from_stubs(stubs, rpc_timeout=5)

    async def close_soon() -> None:
        await asyncio.sleep(0.2)
        await stubs.channel.close()

    closer = asyncio.create_task(close_soon())
    with pytest.raises(LndError) as info:
        await client.get_info()
    await closer
    assert info.value.kind == "unreachable"


async def test_cancelling_the_caller_still_cancels(server: tuple[Failing, Stubs]) -> None:
    servicer, stubs = server
    servicer.delay = 3.0
    client = LndClient.from_stubs(stubs, rpc_timeout=5)
    task = asyncio.create_task(client.get_info())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


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


# ---------------------------------------------------------------- against simnet


class Settings:
    def __init__(self, simnet: SimnetProcess) -> None:
        self.host = simnet.grpc
        self.tls_cert = simnet.tls_cert
        self.macaroon = str(simnet.admin_macaroon)
        self.lndconnect = None
        self.connect_timeout = 5.0
        self.rpc_timeout = 10.0
        self.reconnect_min = 0.05
        self.reconnect_max = 0.5
        self.keepalive_interval = 30.0
        self.max_receive_mb = 50


@pytest.fixture
async def lnd(simnet: SimnetProcess) -> AsyncIterator[LndClient]:
    """The client of a link connected to simnet over TLS with the admin macaroon."""
    link = LndLink(Settings(simnet), NodeStatus())
    task = asyncio.create_task(link.run(lambda stubs: asyncio.Event().wait()))
    try:
        assert await link.wait_active(15)
        yield link.client
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _control(fn: object, *args: object, **kwargs: object) -> dict:
    return await asyncio.to_thread(fn, *args, **kwargs)  # type: ignore[arg-type]


async def test_node_wallet_and_peers(simnet: SimnetProcess, lnd: LndClient) -> None:
    summary = await _control(simnet.control.state)
    info = await lnd.get_info()
    assert info.pubkey == summary["pubkey"]
    assert info.alias == summary["alias"]
    assert info.block_height == summary["block_height"]
    assert info.network == "regtest"
    wallet = await lnd.wallet_balance()
    assert wallet.total_balance_sat == wallet.confirmed_balance_sat + wallet.unconfirmed_balance_sat
    balance = await lnd.channel_balance()
    assert balance.local_balance_msat == summary["local_balance_msat"]
    assert balance.remote_balance_msat == summary["remote_balance_msat"]
    assert await lnd.estimate_fee(2) >= 1
    peers = await lnd.list_peers()
    assert {p.pubkey for p in peers} <= {p["pubkey"] for p in summary["peers"]}
    assert peers
    node = await lnd.get_node_info(peers[0].pubkey)
    assert node.pubkey == peers[0].pubkey
    assert node.alias
    with pytest.raises(LndError) as info_err:
        await lnd.get_node_info("02" + "77" * 32)
    assert info_err.value.kind == "not_found"


async def test_invoice_lifecycle_and_pages(simnet: SimnetProcess, lnd: LndClient) -> None:
    description_hash = hashlib.sha256(b"terms").hexdigest()
    first = await lnd.add_invoice(21_000, memo="coffee", expiry=600)
    second = await lnd.add_invoice(5_000, description_hash=description_hash, private=True)
    assert second.add_index == first.add_index + 1
    assert len(first.payment_hash) == 64 and first.payment_request.startswith("lnbcrt")
    open_invoice = await lnd.lookup_invoice(first.payment_hash)
    assert open_invoice.state == "OPEN"
    assert open_invoice.value_msat == 21_000
    assert open_invoice.memo == "coffee"
    assert open_invoice.expiry == 600
    assert open_invoice.payment_request == first.payment_request
    assert hashlib.sha256(bytes.fromhex(open_invoice.preimage)).hexdigest() == first.payment_hash
    decoded = await lnd.decode_pay_req(first.payment_request)
    assert decoded.payment_hash == first.payment_hash
    assert decoded.num_msat == 21_000
    assert decoded.description == "coffee"
    assert decoded.expires_at == decoded.timestamp + 600
    assert (await lnd.decode_pay_req(second.payment_request)).description_hash == description_hash

    await _control(simnet.control.settle_invoice, first.payment_hash)
    settled = await lnd.lookup_invoice(first.payment_hash)
    assert settled.state == "SETTLED"
    assert settled.amt_paid_msat == 21_000
    assert settled.settle_index >= 1 and settled.settle_date >= settled.creation_date
    assert settled.htlcs >= 1

    page = await lnd.list_invoices(index_offset=first.add_index - 1, num_max_invoices=1)
    assert [i.payment_hash for i in page.invoices] == [first.payment_hash]
    assert page.first_index_offset == page.last_index_offset == first.add_index
    rest = await lnd.list_invoices(index_offset=page.last_index_offset)
    assert rest.invoices[0].payment_hash == second.payment_hash
    assert rest.invoices[0].private
    pending = await lnd.list_invoices(pending_only=True)
    assert first.payment_hash not in {i.payment_hash for i in pending.invoices}
    newest = await lnd.list_invoices(num_max_invoices=1, reversed=True)
    assert newest.invoices[0].payment_hash == second.payment_hash

    with pytest.raises(LndError) as missing:
        await lnd.lookup_invoice("00" * 32)
    assert missing.value.kind == "not_found"
    with pytest.raises(LndError) as garbage:
        await lnd.decode_pay_req("lnbcrt1garbage")
    assert garbage.value.kind == "invalid"


async def test_hold_invoice_settle_and_cancel(simnet: SimnetProcess, lnd: LndClient) -> None:
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    added = await lnd.add_hold_invoice(payment_hash, 10_000, memo="hold", expiry=300)
    assert added.payment_hash == payment_hash
    held = await lnd.lookup_invoice(payment_hash)
    assert held.state == "OPEN" and held.preimage == ""
    await _control(simnet.control.settle_invoice, payment_hash)
    assert (await lnd.lookup_invoice(payment_hash)).state == "ACCEPTED"
    await lnd.settle_invoice(preimage.hex())
    done = await lnd.lookup_invoice(payment_hash)
    assert done.state == "SETTLED" and done.preimage == preimage.hex()

    other = hashlib.sha256(os.urandom(32)).hexdigest()
    await lnd.add_hold_invoice(other, 1_000)
    await lnd.cancel_invoice(other)
    assert (await lnd.lookup_invoice(other)).state == "CANCELED"


async def test_send_payment_success_failure_and_list(simnet: SimnetProcess, lnd: LndClient) -> None:
    summary = await _control(simnet.control.state)
    payee = summary["peers"][0]["pubkey"]
    invoice = await _control(simnet.control.external_invoice, payee, 50_000, "pizza")
    updates: list[Payment] = []

    async def on_update(payment: Payment) -> None:
        updates.append(payment)

    paid = await lnd.send_payment(
        invoice["payment_request"], fee_limit_msat=1_000, timeout_seconds=30, on_update=on_update
    )
    assert paid.status == "SUCCEEDED"
    assert paid.payment_hash == invoice["payment_hash"]
    assert paid.payment_preimage == invoice["preimage"]
    assert paid.value_msat == 50_000
    assert paid.failure_reason == "FAILURE_REASON_NONE"
    assert paid.htlcs and paid.htlcs[-1].status == "SUCCEEDED"
    assert paid.htlcs[-1].hops[-1].pubkey == payee
    assert paid.htlcs[-1].hops[0].chan_id > 0
    assert updates and updates[-1] == paid

    await _control(simnet.control.fail_next_payment, "FAILURE_REASON_NO_ROUTE")
    again = await _control(simnet.control.external_invoice, payee, 7_000)
    failed = await lnd.send_payment(again["payment_request"], fee_limit_msat=100, timeout_seconds=10)
    assert failed.status == "FAILED"
    assert failed.failure_reason == "FAILURE_REASON_NO_ROUTE"

    page = await lnd.list_payments()
    by_hash = {p.payment_hash: p for p in page.payments}
    assert by_hash[paid.payment_hash].status == "SUCCEEDED"
    assert by_hash[failed.payment_hash].status == "FAILED"
    assert page.last_index_offset >= page.first_index_offset >= 1
    later = await lnd.list_payments(index_offset=by_hash[paid.payment_hash].payment_index)
    assert paid.payment_hash not in {p.payment_hash for p in later.payments}

    with pytest.raises(LndError) as twice:
        await lnd.send_payment(invoice["payment_request"], fee_limit_msat=1_000, timeout_seconds=10)
    assert twice.value.kind in ("invalid", "other")


async def test_send_payment_arguments_checked_before_any_call() -> None:
    client = LndClient()  # not connected: a call would raise LndError, not ValueError
    cases = [
        ({}, "payment_request: required"),
        ({"dest": "02" + "11" * 32, "amt_msat": 1}, "payment_hash: required"),
        ({"dest": "02" + "11" * 32, "payment_hash": "00" * 32}, "amt_msat: required"),
        ({"dest": "04" + "11" * 32, "amt_msat": 1, "payment_hash": "00" * 32}, "dest: not a compressed"),
        ({"dest": "02" + "11" * 31, "amt_msat": 1, "payment_hash": "00" * 32}, "dest: expected 66 hex"),
        ({"payment_request": "lnbcrt1", "outgoing_chan_ids": [0]}, r"outgoing_chan_ids\[0\]"),
        ({"payment_request": "lnbcrt1", "last_hop_pubkey": "zz"}, "last_hop_pubkey: not a hex"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            await client.send_payment(fee_limit_msat=10, timeout_seconds=10, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_seconds: must be >= 1"):
        await client.send_payment("lnbcrt1", fee_limit_msat=10, timeout_seconds=0)
    with pytest.raises(ValueError, match="description_hash: expected 64 hex"):
        await client.add_invoice(1, description_hash="abcd")
    with pytest.raises(ValueError, match="channel_point: expected 'funding_txid:output_index'"):
        await client.close_channel("nonsense")
    with pytest.raises(ValueError, match="push_sat: must be less"):
        await client.open_channel("02" + "11" * 32, 1000, push_sat=1000)
    with pytest.raises(ValueError, match="preimage: expected 64 hex"):
        await client.settle_invoice("00")


async def test_send_payment_to_dest(simnet: SimnetProcess, lnd: LndClient) -> None:
    summary = await _control(simnet.control.state)
    payee = summary["peers"][0]["pubkey"]
    invoice = await _control(simnet.control.external_invoice, payee, 3_000)
    paid = await lnd.send_payment(
        dest=payee,
        amt_msat=3_000,
        payment_hash=invoice["payment_hash"],
        final_cltv_delta=40,
        fee_limit_msat=100,
        timeout_seconds=10,
    )
    assert paid.status == "SUCCEEDED"
    assert paid.payment_preimage == invoice["preimage"]


async def test_channels_fees_forwards_and_backups(simnet: SimnetProcess, lnd: LndClient) -> None:
    channels = await lnd.list_channels()
    assert channels
    chan = channels[0]
    assert chan.chan_id > 0 and ":" in chan.channel_point
    assert chan.capacity_sat >= chan.local_balance_sat + chan.remote_balance_sat
    assert all(c.active for c in await lnd.list_channels(active_only=True))

    report = await lnd.fee_report()
    fees = {f.channel_point: f for f in report.channel_fees}
    assert set(fees) == {c.channel_point for c in channels}
    await lnd.update_channel_policy(
        chan.channel_point, base_fee_msat=1234, fee_rate_ppm=567, time_lock_delta=80
    )
    updated = {f.channel_point: f for f in (await lnd.fee_report()).channel_fees}[chan.channel_point]
    assert (updated.base_fee_msat, updated.fee_per_mil) == (1234, 567)
    assert updated.chan_id == chan.chan_id
    with pytest.raises(LndError) as unknown:
        await lnd.update_channel_policy("ab" * 32 + ":0", base_fee_msat=1, fee_rate_ppm=1, time_lock_delta=80)
    assert unknown.value.kind in ("not_found", "invalid")

    start = int(time.time()) - 60
    await _control(simnet.control.forward, channels[0].chan_id, channels[1].chan_id, 100_000, fee_msat=10)
    history = await lnd.forwarding_history(start, int(time.time()) + 60)
    assert history.forwarding_events
    event = history.forwarding_events[-1]
    assert (event.chan_id_in, event.chan_id_out) == (channels[0].chan_id, channels[1].chan_id)
    assert event.amt_in_msat - event.amt_out_msat == event.fee_msat == 10
    assert event.timestamp_ns > 0
    assert history.last_offset_index == len(history.forwarding_events)
    assert not (
        await lnd.forwarding_history(start, 0, index_offset=history.last_offset_index)
    ).forwarding_events

    backup = await lnd.export_all_channel_backups()
    assert backup.multi_chan_backup and bytes.fromhex(backup.multi_chan_backup)
    assert set(backup.chan_points) == {c.channel_point for c in channels}
    assert {b.channel_point for b in backup.single_chan_backups} == set(backup.chan_points)

    summary = await _control(simnet.control.state)
    peer = summary["peers"][-1]["pubkey"]
    point = await lnd.open_channel(peer, 200_000, push_sat=1_000, sat_per_vbyte=2)
    txid, _, index = point.partition(":")
    assert len(txid) == 64 and index.isdigit()
    pending = await lnd.pending_channels()
    opening = [p for p in pending.pending_open if p.channel_point == point]
    assert opening and opening[0].capacity_sat == 200_000
    assert opening[0].initiator == "INITIATOR_LOCAL"

    closing_txid = await lnd.close_channel(chan.channel_point)
    assert len(closing_txid) == 64
    waiting = (await lnd.pending_channels()).waiting_close
    assert chan.channel_point in {p.channel_point for p in waiting}
    await _control(simnet.control.mine, 6)
    closed = {c.channel_point: c for c in await lnd.closed_channels()}
    assert closed[chan.channel_point].close_type == "COOPERATIVE_CLOSE"
    assert closed[chan.channel_point].closing_tx_hash == closing_txid
    assert closed[chan.channel_point].chan_id == chan.chan_id

    force_txid = await lnd.close_channel(channels[1].channel_point, force=True)
    assert len(force_txid) == 64
