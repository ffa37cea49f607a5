"""The daemon as a real process on simnet: events made on the (simulated) LND node
reach real receivers, signed; a kill -9 with deliveries pending loses nothing."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import tomli_w
from lightningd_py.plugins.webhooks.signing import generate_secret
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from .conftest import Received, ThreadedReceiver


def api(daemon: Any, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        daemon.api_url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {daemon.tokens['admin']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def webhooks_live(daemon: Any) -> bool:
    """LND caught up and the webhooks plugin pushes what happens from now on."""
    try:
        health = api(daemon, "GET", "/v1/health")
    except urllib.error.HTTPError:
        return False
    return bool(health["lnd"]["active"] and health["checks"]["webhooks"]["live"])


def webhooks_table(
    receiver: ThreadedReceiver, secret: str, events: list[str], **extra: Any
) -> dict[str, Any]:
    return {
        "webhooks": {
            "endpoints": [{"name": "shop", "url": receiver.url, "secret": secret, "events": events}],
            **extra,
        }
    }


def bodies(receiver: ThreadedReceiver, secret: str) -> list[dict[str, Any]]:
    """Every successful delivery, each verified with the standardwebhooks library."""
    return [Webhook(secret).verify(item.body, item.headers) for item in receiver.received]


def types_seen(receiver: ThreadedReceiver) -> Counter[str]:
    return Counter(json.loads(item.body)["type"] for item in receiver.received)


def test_events_made_on_the_node_reach_the_receiver(
    ldp_daemon_factory: Callable[..., Any], threaded_receivers: Callable[[], ThreadedReceiver]
) -> None:
    receiver = threaded_receivers()
    secret = generate_secret()
    plugins = webhooks_table(
        receiver, secret, ["*", "forward.settled"], retry_schedule=[0, 0.2, 0.5, 1, 1, 1]
    )
    # Cancellation is found by the daemon's sweep of open invoices: sweep every second.
    daemon = ldp_daemon_factory(plugins=plugins, lnd={"invoice_sweep_interval": 1})
    ctl = daemon.simnet.control
    peer = ctl.state()["channel_list"][0]["peer"]
    daemon.wait_for(lambda: webhooks_live(daemon), 30)

    ctl.add_invoice(value_msat=8_000, memo="order 0", expiry=1)  # left to expire
    paid = ctl.add_invoice(value_msat=21_000, memo="order 1")
    ctl.settle_invoice(paid["payment_hash"])
    canceled = api(daemon, "POST", "/v1/invoices", {"amount_msat": 5_000, "memo": "order 2"})
    api(daemon, "POST", f"/v1/invoices/{canceled['payment_hash']}/cancel")
    outgoing = ctl.external_invoice(peer, 10_000, memo="supplier")
    api(
        daemon,
        "POST",
        "/v1/payments",
        {"payment_request": outgoing["payment_request"], "fee_limit_msat": 1000},
    )
    ctl.fail_next_payment("FAILURE_REASON_NO_ROUTE")
    failing = ctl.external_invoice(peer, 10_000, memo="supplier 2")
    try:
        api(
            daemon,
            "POST",
            "/v1/payments",
            {"payment_request": failing["payment_request"], "fee_limit_msat": 1000},
        )
    except urllib.error.HTTPError:
        pass  # the API reports the failure; the webhook is what this test checks
    opened = ctl.open_channel(peer, 500_000, confirm=True)
    chan = opened.get("chan_id") or opened.get("channel_point")
    ctl.set_channel_active(chan, False)
    ctl.set_channel_active(chan, True)
    channels = ctl.state()["channel_list"]
    ctl.forward(channels[0]["chan_id"], channels[1]["chan_id"], 100_000, fee_msat=10)
    ctl.close_channel(chan, confirm=True)
    first, second = channels[0]["chan_id"], channels[1]["chan_id"]
    ctl.set_balance(first, 900_000_000)
    ctl.set_balance(second, 50_000_000)
    rebalance = {"outgoing_chan_id": int(first), "incoming_chan_id": int(second), "amount_sat": 100_000}
    # Whether simnet finds a circular route varies; the outcome is what gets pushed.
    outcome = api(daemon, "POST", "/v1/rebalance/execute", rebalance)["status"]
    assert outcome in ("succeeded", "failed")
    ctl.restart(down_seconds=2, wait=True)

    wanted = {
        "invoice.created",
        "payment.confirmed",
        "invoice.canceled",
        "invoice.expired",
        "payment.sent",
        "payment.failed",
        "channel.opened",
        "channel.inactive",
        "channel.active",
        "channel.closed",
        "forward.settled",
        "node.unreachable",
        "node.reachable",
        f"rebalance.{outcome}",
    }
    try:
        daemon.wait_for(lambda: wanted <= set(types_seen(receiver)), 30)
    finally:
        print(types_seen(receiver))
    seen = bodies(receiver, secret)
    # A successful rebalance also settles an invoice of the node (its own), hence "in".
    confirmed = {b["data"]["payment_hash"]: b["data"] for b in seen if b["type"] == "payment.confirmed"}
    assert confirmed[paid["payment_hash"]]["amt_paid_msat"] == 21_000
    ids = [item.headers["webhook-id"] for item in receiver.received]
    assert len(ids) == len(set(ids))

    # The admin API and the Prometheus endpoint, served by the http_api and metrics plugins.
    health = api(daemon, "GET", "/v1/webhooks/endpoints")["endpoints"]
    assert health[0]["name"] == "shop" and health[0]["success_rate"] == 1.0
    page = api(daemon, "GET", "/v1/webhooks/deliveries?status=delivered&limit=500")
    listed = {d["webhook_id"] for d in page["deliveries"]}
    # Events still arriving (after the restart) may be delivered between the two reads.
    received_now = {item.headers["webhook-id"] for item in receiver.received}
    assert set(ids) <= listed <= received_now
    tested = api(daemon, "POST", "/v1/webhooks/endpoints/shop/test")
    assert tested["delivery"]["status"] == "delivered"
    for text in (json.dumps(health), json.dumps(page), json.dumps(tested), daemon.logs()):
        assert secret[6:] not in text
    with urllib.request.urlopen(daemon.metrics_url, timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    delivered = [
        s.value
        for s in families["lightningd_webhook_deliveries"].samples
        if s.name.endswith("_total") and s.labels == {"endpoint": "shop", "result": "delivered"}
    ]
    # The test delivery counts too; events still arriving may add deliveries meanwhile.
    assert len(delivered) == 1
    assert len(ids) + 1 <= delivered[0] <= len(receiver.received) + 1
    assert "lightningd_webhook_delivery_latency_seconds" in families


def test_kill9_with_pending_deliveries_then_restart(
    ldp_daemon_factory: Callable[..., Any], threaded_receivers: Callable[[], ThreadedReceiver]
) -> None:
    receiver = threaded_receivers()
    receiver.status = 503
    secret = generate_secret()
    count = 40
    plugins = webhooks_table(
        receiver,
        secret,
        ["invoice.created", "payment.confirmed"],
        retry_schedule=[0] + [0.5] * 29,
        retry_jitter=0,
    )
    daemon = ldp_daemon_factory(plugins=plugins)
    daemon.wait_for(lambda: webhooks_live(daemon), 30)
    ctl = daemon.simnet.control
    hashes = [ctl.add_invoice(value_msat=1000 + i, memo=f"order {i}")["payment_hash"] for i in range(count)]
    for h in hashes[: count // 2]:
        ctl.settle_invoice(h)
    expected = count + count // 2
    daemon.wait_for(lambda: len({a.headers["webhook-id"] for a in receiver.attempts}) >= expected, 20)
    ids_before = {a.headers["webhook-id"] for a in receiver.attempts}

    daemon.kill9()
    receiver.status = 200
    # Payments arrive while the daemon is down: it catches up from LND when it is back.
    for h in hashes[count // 2 :]:
        ctl.settle_invoice(h)
    daemon.start()

    daemon.wait_for(lambda: len(receiver.received) >= 2 * count, 30)
    time.sleep(0.5)
    ids_after = [item.headers["webhook-id"] for item in receiver.received]
    assert len(ids_after) == len(set(ids_after)) == 2 * count  # each event once
    assert ids_before <= set(ids_after)  # pending deliveries kept their webhook-id
    seen = bodies(receiver, secret)
    assert Counter(b["type"] for b in seen) == {"invoice.created": count, "payment.confirmed": count}
    assert {b["data"]["payment_hash"] for b in seen if b["type"] == "payment.confirmed"} == set(hashes)


@pytest.mark.parametrize("problem", ["url", "secret", "events"])
def test_bad_endpoint_is_a_config_error_at_start(
    ldp_daemon_factory: Callable[..., Any], threaded_receivers: Callable[[], ThreadedReceiver], problem: str
) -> None:
    receiver = threaded_receivers()
    table = webhooks_table(receiver, generate_secret(), ["payment.confirmed"])
    ep = table["webhooks"]["endpoints"][0]
    leaked = "whsec_c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw"
    if problem == "url":
        ep["url"] = "mailto:shop@example.com"
    elif problem == "secret":
        ep["secret"] = leaked + "!"
    else:
        ep["events"] = ["payment.recieved"]
    with pytest.raises(RuntimeError) as info:
        ldp_daemon_factory(plugins=table, timeout=15)
    message = str(info.value)
    assert f"plugins.webhooks.endpoints[0].{problem}: endpoint 'shop'" in message
    assert leaked[6:] not in message


def test_secret_rotation_by_sighup_without_downtime(
    ldp_daemon_factory: Callable[..., Any],
    ldp_config_factory: Callable[..., Any],
    threaded_receivers: Callable[[], ThreadedReceiver],
) -> None:
    receiver = threaded_receivers()
    old, new = generate_secret(), generate_secret()
    config = ldp_config_factory(plugins=webhooks_table(receiver, old, ["payment.confirmed"]))
    daemon = ldp_daemon_factory(config)
    daemon.wait_for(lambda: webhooks_live(daemon), 30)
    ctl = daemon.simnet.control

    def pay_and_wait(count: int) -> Received:
        ctl.settle_invoice(ctl.add_invoice(value_msat=1000)["payment_hash"])
        daemon.wait_for(lambda: len(receiver.received) >= count, 10)
        return receiver.received[count - 1]

    def reload(secret: str | list[str]) -> None:
        data = config.data
        data["plugins"]["webhooks"]["endpoints"][0]["secret"] = secret
        config.path.write_text(tomli_w.dumps(data))
        mark = len(daemon.notifications)
        daemon.signal(signal.SIGHUP)
        daemon.wait_notification("READY=1", 10, after=mark)

    first = pay_and_wait(1)
    Webhook(old).verify(first.body, first.headers)
    reload([new, old])  # step 1: both secrets sign
    both = pay_and_wait(2)
    assert len(both.headers["webhook-signature"].split()) == 2
    Webhook(old).verify(both.body, both.headers)
    Webhook(new).verify(both.body, both.headers)
    reload(new)  # step 3: the consumer switched; the old secret goes
    only_new = pay_and_wait(3)
    Webhook(new).verify(only_new.body, only_new.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(only_new.body, only_new.headers)
    checks = api(daemon, "GET", "/v1/health")["checks"]
    assert checks["webhooks"]["ok"] is True
    assert checks["webhooks"]["endpoints"]["shop"]["queue_depth"] == 0
    assert old[6:] not in daemon.logs() and new[6:] not in daemon.logs()
