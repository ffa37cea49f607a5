"""End to end inside the daemon's plugin host: journal events -> outbox -> signed HTTP
deliveries to real local receivers, verified with the standardwebhooks library."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from lightningd_py.events import (
    ChannelActive,
    ChannelClosed,
    ChannelInactive,
    ChannelOpened,
    ChannelPendingOpen,
    ForwardFailed,
    ForwardSettled,
    InvoiceAccepted,
    InvoiceCanceled,
    InvoiceCreated,
    InvoiceExpired,
    InvoiceSettled,
    NodeStateChanged,
    PaymentFailed,
    PaymentSucceeded,
    PeerOnline,
    RebalanceFailed,
    RebalanceSucceeded,
)
from lightningd_py.hookspecs import hookimpl
from lightningd_py.journal import Journal
from lightningd_py.store import Store

from .conftest import FAST_SCHEDULE, Received, endpoint, eventually, run_plugin

pytestmark = pytest.mark.anyio


def verify(secret: str, item: Received) -> dict[str, Any]:
    """Verify one delivery with the independent library; its parsed body."""
    return Webhook(secret).verify(item.body, item.headers)


def every_event() -> list[Any]:
    h = "ab" * 32
    return [
        InvoiceCreated(payment_hash=h, value_msat=5000, creation_date=1_700_000_000, expiry=600),
        InvoiceAccepted(payment_hash=h),
        InvoiceSettled(payment_hash=h, value_msat=5000, amt_paid_msat=5000, settle_index=1),
        InvoiceExpired(payment_hash="cd" * 32),
        InvoiceCanceled(payment_hash="ef" * 32),
        PaymentSucceeded(payment_hash="01" * 32, value_msat=1000, fee_msat=1, payment_index=1),
        PaymentFailed(payment_hash="02" * 32, failure_reason="FAILURE_REASON_NO_ROUTE", payment_index=2),
        ChannelPendingOpen(channel_point="aa:0"),
        ChannelOpened(channel_point="aa:0", chan_id=7, capacity_sat=1_000_000),
        ChannelActive(channel_point="aa:0", chan_id=7),
        ChannelInactive(channel_point="aa:0", chan_id=7),
        ChannelClosed(channel_point="aa:0", chan_id=7, close_type="COOPERATIVE_CLOSE"),
        ForwardSettled(incoming_chan_id=1, outgoing_chan_id=2, amt_in_msat=1010, amt_out_msat=1000),
        ForwardFailed(incoming_chan_id=1, outgoing_chan_id=2, incoming_htlc_id=9),
        PeerOnline(pubkey="02" + "11" * 32),
        RebalanceSucceeded(rebalance_id="r1", outgoing_chan_id=1, incoming_chan_id=2, amount_msat=10_000),
        RebalanceFailed(rebalance_id="r2", outgoing_chan_id=1, incoming_chan_id=2, amount_msat=10_000),
        NodeStateChanged(state="UNREACHABLE", reachable=False),
        NodeStateChanged(state="LOCKED", reachable=True),
        NodeStateChanged(state="SERVER_ACTIVE", reachable=True),
    ]


ALL_BUT_FORWARDS = {
    "invoice.created",
    "payment.confirmed",
    "invoice.expired",
    "invoice.canceled",
    "payment.sent",
    "payment.failed",
    "channel.opened",
    "channel.closed",
    "channel.active",
    "channel.inactive",
    "rebalance.succeeded",
    "rebalance.failed",
    "node.unreachable",
    "node.reachable",
}


async def test_every_event_type_reaches_the_endpoints_that_asked(tmp_path: Path, receivers: Any) -> None:
    everything, payments, routing = await receivers(), await receivers(), await receivers()
    eps = [
        endpoint("everything", everything, ["*"]),
        endpoint("payments", payments, ["payment.*"]),
        endpoint("routing", routing, ["forward.settled", "channel.*"]),
    ]
    async with run_plugin(tmp_path, {"endpoints": eps}) as d:
        ids = await d.append(every_event())
        await everything.wait_for(len(ALL_BUT_FORWARDS))
        await payments.wait_for(3)
        await routing.wait_for(5)
        await anyio.sleep(0.3)  # nothing more arrives

    expected = {
        "everything": ALL_BUT_FORWARDS,
        "payments": {"payment.confirmed", "payment.sent", "payment.failed"},
        "routing": {
            "forward.settled",
            "channel.opened",
            "channel.closed",
            "channel.active",
            "channel.inactive",
        },
    }
    for ep, receiver in zip(eps, (everything, payments, routing), strict=True):
        bodies = [verify(ep["secret"], item) for item in receiver.received]
        types = [b["type"] for b in bodies]
        assert sorted(types) == sorted(expected[ep["name"]]), ep["name"]
        for item, body in zip(receiver.received, bodies, strict=True):
            assert set(body) == {"type", "timestamp", "data"}
            assert body["timestamp"].endswith("Z")
            assert item.headers["webhook-id"].startswith("msg_")
            assert body["data"]["event_id"] in ids
    settled = next(
        b for b in map(json.loads, (i.body for i in payments.received)) if b["type"] == "payment.confirmed"
    )
    assert settled["data"]["amt_paid_msat"] == 5000
    assert settled["data"]["payment_hash"] == "ab" * 32
    # One event, several endpoints: a different webhook-id for each endpoint.
    all_ids = [i.headers["webhook-id"] for r in (everything, payments, routing) for i in r.received]
    assert len(all_ids) == len(set(all_ids))


async def test_receiver_down_then_up_gets_everything(tmp_path: Path, receivers: Any) -> None:
    receiver = await receivers()
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    await receiver.stop()
    ep = endpoint("shop", receiver, ["payment.confirmed"])
    table = {
        "endpoints": [ep],
        "retry_schedule": [0, 0.2, 0.3, 0.3, 0.5, 0.5, 1, 1, 1, 1],
        "retry_jitter": 0.1,
    }
    async with run_plugin(tmp_path, table) as d:
        await d.append([InvoiceSettled(payment_hash=f"{i:064x}") for i in range(20)])
        await anyio.sleep(0.8)
        health = d.service.workers["shop"].health()
        assert health["queue_depth"] == 20
        assert health["last_error"].startswith("cannot connect")
        await receiver.start(port)
        got = await receiver.wait_for(20, within=10)
        await anyio.sleep(0.3)
        assert d.service.workers["shop"].depth == 0
    hashes = {verify(ep["secret"], item)["data"]["payment_hash"] for item in got}
    assert len(got) == 20 and len(hashes) == 20


async def test_500_is_retried_with_the_same_webhook_id(tmp_path: Path, receivers: Any) -> None:
    receiver = await receivers()
    tries: Counter[str] = Counter()

    async def flaky(item: Received) -> tuple[int, dict[str, str]]:
        tries[item.headers["webhook-id"]] += 1
        return (500, {}) if tries[item.headers["webhook-id"]] <= 2 else (200, {})

    receiver.behaviour = flaky
    ep = endpoint("shop", receiver, ["payment.*"])
    async with run_plugin(tmp_path, {"endpoints": [ep], "retry_schedule": FAST_SCHEDULE}) as d:
        await d.append([PaymentSucceeded(payment_hash="01" * 32)])
        await receiver.wait_for(1)
        await d.settled()
        rows = await d.daemon.store.fetchall(
            "SELECT status, attempts, last_status_code FROM webhooks_deliveries"
        )
    assert [tuple(r) for r in rows] == [("delivered", 3, 200)]
    assert len(receiver.attempts) == 3
    assert len({a.headers["webhook-id"] for a in receiver.attempts}) == 1
    for attempt in receiver.attempts:
        verify(ep["secret"], attempt)  # each attempt is signed on its own
    gaps = [b.at - a.at for a, b in zip(receiver.attempts, receiver.attempts[1:], strict=False)]
    assert gaps[0] >= 0.2 * 0.8 and gaps[1] >= 0.4 * 0.8


async def test_429_retry_after_is_honoured(tmp_path: Path, receivers: Any) -> None:
    receiver = await receivers()

    async def busy(item: Received) -> tuple[int, dict[str, str]]:
        return (429, {"Retry-After": "1"}) if len(receiver.attempts) == 1 else (200, {})

    receiver.behaviour = busy
    ep = endpoint("shop", receiver, ["payment.sent"])
    async with run_plugin(tmp_path, {"endpoints": [ep], "retry_schedule": [0, 0.05, 0.05]}) as d:
        await d.append([PaymentSucceeded(payment_hash="01" * 32)])
        await receiver.wait_for(1)
    first, second = receiver.attempts
    assert second.at - first.at >= 0.95
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_final_failure_is_kept_and_counted(tmp_path: Path, receivers: Any) -> None:
    receiver = await receivers()

    async def broken(item: Received) -> tuple[int, dict[str, str]]:
        return 500, {}

    receiver.behaviour = broken
    ep = endpoint("shop", receiver, ["payment.failed"])
    async with run_plugin(tmp_path, {"endpoints": [ep], "retry_schedule": [0, 0.05, 0.05]}) as d:
        await d.append([PaymentFailed(payment_hash="02" * 32)])
        await d.settled()
        row = await d.daemon.store.fetchone("SELECT status, attempts, last_error FROM webhooks_deliveries")
        metrics = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(generate_latest(d.registry).decode())
            for s in fam.samples
        }
    assert tuple(row) == ("failed", 3, "HTTP 500")
    assert len(receiver.attempts) == 3
    key = ("lightningd_webhook_deliveries_total", (("endpoint", "shop"), ("result", "failed")))
    assert metrics[key] == 1
    key = ("lightningd_webhook_attempts_total", (("endpoint", "shop"), ("outcome", "http_error")))
    assert metrics[key] == 3
    assert metrics[("lightningd_webhook_queue_depth", (("endpoint", "shop"),))] == 0


async def test_slow_endpoint_does_not_hold_up_another(tmp_path: Path, receivers: Any) -> None:
    slow, fast = await receivers(), await receivers()
    release = anyio.Event()

    async def stuck(item: Received) -> tuple[int, dict[str, str]]:
        await release.wait()
        return 200, {}

    slow.behaviour = stuck
    eps = [
        endpoint("slow", slow, ["payment.confirmed"], concurrency=2, timeout=30),
        endpoint("fast", fast, ["payment.confirmed"], concurrency=2),
    ]
    async with run_plugin(tmp_path, {"endpoints": eps}) as d:
        started = time.monotonic()
        await d.append([InvoiceSettled(payment_hash=f"{i:064x}") for i in range(50)])
        await fast.wait_for(50, within=5)
        assert time.monotonic() - started < 3
        assert len(slow.received) == 0
        assert d.service.workers["slow"].in_flight == 2
        release.set()
        await slow.wait_for(50, within=10)


async def test_restart_with_pending_deliveries_delivers_each_once(tmp_path: Path, receivers: Any) -> None:
    receiver = await receivers()
    up = False

    async def gate(item: Received) -> tuple[int, dict[str, str]]:
        return (200, {}) if up else (503, {})

    receiver.behaviour = gate
    ep = endpoint("shop", receiver, ["invoice.created"])
    table = {"endpoints": [ep], "retry_schedule": [0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], "retry_jitter": 0}
    async with run_plugin(tmp_path, table) as d:
        await d.append([InvoiceCreated(payment_hash=f"{i:064x}") for i in range(30)])
        await eventually(lambda: len(receiver.attempts) >= 30)
    seen_before = {a.headers["webhook-id"] for a in receiver.attempts}
    assert len(seen_before) == 30 and not receiver.received
    up = True
    async with run_plugin(tmp_path, table) as d:
        await receiver.wait_for(30)
        await anyio.sleep(0.5)
        assert d.service.workers["shop"].depth == 0
    delivered = [i.headers["webhook-id"] for i in receiver.received]
    assert len(delivered) == 30 and set(delivered) == seen_before


async def test_two_secrets_both_sign_and_reload_rotates(tmp_path: Path, receivers: Any) -> None:
    from lightningd_py.plugins.webhooks.signing import generate_secret

    receiver = await receivers()
    old, new = generate_secret(), generate_secret()
    ep = endpoint("shop", receiver, ["invoice.*"], secret=[new, old])
    async with run_plugin(tmp_path, {"endpoints": [ep]}) as d:
        await d.append([InvoiceCreated(payment_hash="aa" * 32)])
        (item,) = await receiver.wait_for(1)
        assert len(item.headers["webhook-signature"].split(" ")) == 2
        verify(old, item)
        verify(new, item)
        # Rotation done: the consumer switched; the old secret is removed without a restart.
        settings = d.service.settings.model_copy()
        retired = endpoint("shop", receiver, ["invoice.*"], secret=new)
        from lightningd_py.plugins.webhooks.settings import WebhooksSettings

        d.service.reload(WebhooksSettings.model_validate({"endpoints": [retired]}))
        assert settings is not d.service.settings
        await d.append([InvoiceCreated(payment_hash="bb" * 32)])
        items = await receiver.wait_for(2)
    assert len(items[1].headers["webhook-signature"].split(" ")) == 1
    verify(new, items[1])
    with pytest.raises(Exception, match="signature"):
        verify(old, items[1])


async def test_history_is_not_replayed_when_first_enabled(tmp_path: Path, receivers: Any) -> None:
    # The daemon ran without the plugin: the journal holds an old settlement.
    store = Store(tmp_path / "lightningd-py.sqlite")
    store.open()
    journal = Journal(store)
    journal.open()
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        await journal.append([InvoiceSettled(payment_hash="aa" * 32)])
        tg.cancel_scope.cancel()
    await store.close()
    receiver = await receivers()
    ep = endpoint("shop", receiver, ["payment.confirmed"])
    async with run_plugin(tmp_path, {"endpoints": [ep]}) as d:
        await d.append([InvoiceSettled(payment_hash="bb" * 32)])
        await receiver.wait_for(1)
        await anyio.sleep(0.3)
    assert [json.loads(i.body)["data"]["payment_hash"] for i in receiver.received] == ["bb" * 32]


async def test_backlog_larger_than_memory_goes_through_the_outbox(tmp_path: Path, receivers: Any) -> None:
    receiver = await receivers()
    up = False

    async def gate(item: Received) -> tuple[int, dict[str, str]]:
        return (200, {}) if up else (503, {})

    receiver.behaviour = gate
    ep = endpoint("shop", receiver, ["payment.confirmed"], concurrency=2)
    # Ten in memory per queue: most of the 150 deliveries live only in the outbox at times.
    table = {"endpoints": [ep], "memory_queue": 10, "scan_interval": 0.2, "retry_schedule": [0] + [0.2] * 20}
    async with run_plugin(tmp_path, table) as d:
        await d.append([InvoiceSettled(payment_hash=f"{i:064x}") for i in range(150)])
        await eventually(lambda: len({a.headers["webhook-id"] for a in receiver.attempts}) == 150)
        assert d.service.workers["shop"].depth == 150
        up = True
        await receiver.wait_for(150, within=20)
        await d.settled()
    ids = [i.headers["webhook-id"] for i in receiver.received]
    assert len(ids) == len(set(ids)) == 150


class _Enriches:
    """A third-party plugin deciding the payload of payment.confirmed webhooks."""

    @hookimpl
    def ldp_webhook_payload(self, daemon: Any, event: Any, payload: Any) -> Any:
        if event.type == "invoice.settled":
            return {**payload, "order_id": payload["memo"].removeprefix("order ")}
        return None


class _Raises:
    @hookimpl(tryfirst=True)
    def ldp_webhook_payload(self, daemon: Any, event: Any, payload: Any) -> Any:
        raise RuntimeError("a broken payload plugin")


class _NotJson:
    @hookimpl(tryfirst=True)
    def ldp_webhook_payload(self, daemon: Any, event: Any, payload: Any) -> Any:
        return {"when": object()} if event.type == "invoice.created" else None


async def test_webhook_payload_hook_decides_the_data(tmp_path: Path, receivers: Any) -> None:
    receiver = await receivers()
    ep = endpoint("shop", receiver, ["payment.confirmed", "invoice.created"])
    others = {"enriches": _Enriches(), "raises": _Raises(), "not_json": _NotJson()}
    async with run_plugin(tmp_path, {"endpoints": [ep]}, others) as d:
        await d.append([InvoiceCreated(payment_hash="aa" * 32, memo="order 7")])
        await d.append([InvoiceSettled(payment_hash="aa" * 32, memo="order 7")])
        items = await receiver.wait_for(2)
        assert d.host.runtimes["raises"].errors >= 1  # logged, counted, skipped
    by_type = {b["type"]: b["data"] for b in (verify(ep["secret"], i) for i in items)}
    assert by_type["payment.confirmed"]["order_id"] == "7"
    # Not JSON: the default payload is sent instead.
    assert by_type["invoice.created"]["memo"] == "order 7" and "when" not in by_type["invoice.created"]


async def test_history_learnt_while_first_catching_up_is_not_pushed(tmp_path: Path, receivers: Any) -> None:
    receiver = await receivers()
    ep = endpoint("shop", receiver, ["payment.confirmed"])
    async with run_plugin(tmp_path, {"endpoints": [ep]}, ready=False) as d:
        # First start: LND's history (every invoice it ever settled) is being journaled.
        await d.append([InvoiceSettled(payment_hash=f"{i:064x}") for i in range(5)])
        await eventually(lambda: d.host.runtimes["webhooks"].cursor == d.journal.last_id)
        d.host.node.extra["streams_ready"] = True
        await eventually(lambda: d.service.history_until == 5)
        await d.append([InvoiceSettled(payment_hash="ee" * 32)])
        await receiver.wait_for(1)
        await d.settled()
    # The boundary is kept: after a restart, events the daemon catches up on are sent.
    async with run_plugin(tmp_path, {"endpoints": [ep]}, ready=False) as d:
        await d.append([InvoiceSettled(payment_hash="ff" * 32)])
        await receiver.wait_for(2)
        await anyio.sleep(0.2)
    assert [json.loads(i.body)["data"]["payment_hash"] for i in receiver.received] == ["ee" * 32, "ff" * 32]


async def test_timeout_counts_as_a_failed_attempt(tmp_path: Path, receivers: Any) -> None:
    receiver = await receivers()

    async def slow_once(item: Received) -> tuple[int, dict[str, str]]:
        if len(receiver.attempts) == 1:
            await anyio.sleep(1.0)
        return 200, {}

    receiver.behaviour = slow_once
    ep = endpoint("shop", receiver, ["payment.sent"], timeout=0.2)
    async with run_plugin(tmp_path, {"endpoints": [ep], "retry_schedule": [0, 0.1, 0.1]}) as d:
        await d.append([PaymentSucceeded(payment_hash="01" * 32)])
        await eventually(lambda: len(receiver.attempts) >= 2)
        await d.settled()
        health = d.service.workers["shop"].health()
        row = await d.daemon.store.fetchone("SELECT status, attempts FROM webhooks_deliveries")
    assert tuple(row) == ("delivered", 2)
    assert health["last_error"] == "no response within 0.2 s" and health["success_rate"] == 0.5


async def test_reload_adds_and_removes_endpoints(tmp_path: Path, receivers: Any) -> None:
    from lightningd_py.plugins.webhooks.settings import WebhooksSettings

    first, second = await receivers(), await receivers()
    up = False

    async def gate(item: Received) -> tuple[int, dict[str, str]]:
        return (200, {}) if up else (503, {})

    first.behaviour = gate
    one = endpoint("one", first, ["payment.confirmed"])
    two = endpoint("two", second, ["payment.confirmed"])
    table = {"endpoints": [one], "retry_schedule": [0] + [0.2] * 20}
    async with run_plugin(tmp_path, table) as d:
        await d.append([InvoiceSettled(payment_hash=f"{i:064x}") for i in range(10)])
        await eventually(lambda: len(first.attempts) >= 10)
        # Add an endpoint and resize the first: the workers are rebuilt; the first's
        # backlog comes back from the outbox.
        d.service.reload(
            WebhooksSettings.model_validate({**table, "endpoints": [one | {"concurrency": 2}, two]})
        )
        await eventually(lambda: set(d.service.workers) == {"one", "two"})
        await d.append([InvoiceSettled(payment_hash="aa" * 32)])
        await second.wait_for(1)
        up = True
        await first.wait_for(11)
        # Removing an endpoint stops its deliveries; its rows stay in the outbox.
        d.service.reload(WebhooksSettings.model_validate({**table, "endpoints": [one]}))
        await eventually(lambda: set(d.service.workers) == {"one"})
        await d.append([InvoiceSettled(payment_hash="bb" * 32)])
        await first.wait_for(12)
        await anyio.sleep(0.2)
    assert len(second.received) == 1
    assert len({i.headers["webhook-id"] for i in first.received}) == 12
