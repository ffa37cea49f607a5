"""The HTTP API over real HTTP against a daemon on simnet: every endpoint, role and error
case, invoices paid on simnet seen through GET, the long-poll and SSE, and invoices
created and paid while the daemon was killed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ZERO_HASH = "00" * 32


@pytest.fixture
def rate_server() -> Iterator[dict[str, Any]]:
    """A local exchange-rate provider: ``{"data": {"amount": <rate>}}`` per currency."""
    state: dict[str, Any] = {"rates": {"EUR": "50000"}, "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["hits"] += 1
            currency = self.path.rsplit("/", 1)[-1]
            if currency not in state["rates"]:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps({"data": {"amount": state["rates"][currency]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/price/{{currency}}"
    yield state
    server.shutdown()


def rates_config(rate_server: dict[str, Any]) -> dict[str, Any]:
    return {
        "exchange_rates": {"provider": "custom", "url": rate_server["url"], "json_path": "data.amount"},
        "rate_limits": {"general": "0"},
    }


def test_invoice_paid_on_simnet_shows_in_get_wait_and_sse(api_daemon, api_of, simctl, sse) -> None:
    api = api_of(api_daemon)
    stream = sse(api, "?types=invoice.*")
    assert stream.status == 200
    inv = api.invoice(amount_sat=2100, memo="coffee", metadata={"order_id": "A-17"})
    h = inv["payment_hash"]
    assert inv["status"] == "pending" and inv["amount_msat"] == 2_100_000
    assert inv["payment_request"].startswith("lnbcrt")
    got = api.get(f"/v1/invoices/{h}", role="readonly")
    assert got.status == 200 and got.json["metadata"] == {"order_id": "A-17"}

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.get, f"/v1/invoices/{h}/wait?timeout=20", role="readonly")
        time.sleep(0.3)
        assert not waiting.done()
        simctl(api_daemon.simnet, "/invoices/settle", {"payment_hash": h})
        waited = waiting.result(timeout=20)
    assert waited.status == 200 and waited.json["status"] == "paid"
    assert waited.json["amount_paid_msat"] == 2_100_000

    settled = stream.wait_for(lambda e: e[1] == "invoice.settled" and e[2]["payment_hash"] == h)
    assert settled[0][2]["amt_paid_msat"] == 2_100_000
    created = stream.wait_for(lambda e: e[1] == "invoice.created" and e[2]["payment_hash"] == h)
    api_daemon.wait_for(lambda: api.get(f"/v1/invoices/{h}", role="readonly").json["status"] == "paid")
    final = api.get(f"/v1/invoices/{h}", role="readonly").json
    assert final["preimage"] and final["settled_at"] and final["metadata"] == {"order_id": "A-17"}
    history = api.get(f"/v1/invoices/{h}/history", role="readonly").json["changes"]
    assert [c["status"] for c in history] == ["pending", "paid"]

    # A client that reconnects with Last-Event-ID misses nothing.
    resumed = sse(api, "?types=invoice.settled", headers={"Last-Event-ID": str(created[0][0])})
    again = resumed.wait_for(lambda e: e[2]["payment_hash"] == h)
    assert again[0][0] == settled[0][0]
    assert all(e[1] == "invoice.settled" for e in resumed.events)
    # A paid invoice's long-poll answers at once.
    assert api.get(f"/v1/invoices/{h}/wait?timeout=20", role="readonly").json["status"] == "paid"


def test_amount_forms_and_fiat(ldp_daemon_factory, api_of, rate_server) -> None:
    daemon = ldp_daemon_factory(plugins={"http_api": rates_config(rate_server)})
    api = api_of(daemon)
    assert api.invoice(amount_msat=1234)["amount_msat"] == 1234
    assert api.invoice(amount_btc="0.00012345")["amount_msat"] == 12_345_000
    assert api.invoice()["amount_msat"] == 1_000_000
    any_amount = api.post("/v1/invoices", {"memo": "tip"}, role="invoice")
    assert any_amount.status == 201 and any_amount.json["amount_msat"] == 0
    fiat = api.invoice(fiat_amount="5.00", fiat_currency="EUR", memo="in euros")
    assert fiat["amount_msat"] == 10_000_000  # 5 EUR at 50,000 EUR/BTC = 0.0001 BTC
    assert fiat["fiat"] == {"currency": "EUR", "amount": "5.00", "exchange_rate": "50000"}
    stored = api.get(f"/v1/invoices/{fiat['payment_hash']}").json
    assert stored["fiat"] == fiat["fiat"]
    api.invoice(fiat_amount="1", fiat_currency="EUR")
    assert rate_server["hits"] == 1  # cached
    missing = api.post("/v1/invoices", {"fiat_amount": "5", "fiat_currency": "JPY"}, role="invoice")
    assert missing.status == 503 and missing.error["code"] == "exchange_rate_unavailable"
    assert "custom" in missing.error["message"] and "JPY" in missing.error["message"]

    bad = [
        ({"amount_msat": -5}, "amount_msat"),
        ({"amount_msat": 0}, "amount_msat"),
        ({"amount_msat": 10**20}, "amount_msat"),
        ({"amount_sat": "lots"}, "amount_sat"),
        ({"amount_btc": "0.000000000001"}, "amount_btc"),
        ({"amount_btc": "22000000"}, "amount_btc"),
        ({"amount_sat": 1, "amount_msat": 1000}, "amount_sat"),
        ({"fiat_amount": "5"}, "fiat_currency"),
        ({"fiat_currency": "EUR"}, "fiat_amount"),
        ({"fiat_amount": "5", "fiat_currency": "euro"}, "fiat_currency"),
        ({"memo": "x" * 700}, "memo"),
        ({"expiry": 5}, "expiry"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"amount_sat": 1, "colour": "red"}, "colour"),
    ]
    for body, field in bad:
        reply = api.post("/v1/invoices", body, role="invoice")
        assert reply.status == 400, (body, reply.raw)
        assert reply.error["field"] == field, (body, reply.raw)
    assert api.post("/v1/invoices", raw=b"{", role="invoice").error["field"] == "body"
    huge = api.post("/v1/invoices", raw=b'{"memo": "' + b"x" * 70_000 + b'"}', role="invoice")
    assert huge.status == 413 and huge.error["field"] == "body"


def test_idempotency_key(api_daemon, api_of) -> None:
    api = api_of(api_daemon)
    body = {"amount_sat": 500, "memo": "order 9"}
    key = {"Idempotency-Key": "order-9"}
    first = api.post("/v1/invoices", body, role="invoice", headers=key)
    again = api.post("/v1/invoices", body, role="invoice", headers=key)
    assert first.status == again.status == 201
    assert first.json == again.json and again.headers.get("idempotent-replayed") == "true"
    other = api.post("/v1/invoices", {"amount_sat": 501, "memo": "order 9"}, role="invoice", headers=key)
    assert other.status == 422 and other.error["field"] == "Idempotency-Key"
    # Concurrent retries with one key still make one invoice.
    key2 = {"Idempotency-Key": "order-10"}
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda _: api.post("/v1/invoices", body, role="invoice", headers=key2), range(8))
        )
    assert {r.status for r in replies} == {201}
    assert len({r.json["payment_hash"] for r in replies}) == 1
    bad = api.post("/v1/invoices", body, role="invoice", headers={"Idempotency-Key": "x" * 300})
    assert bad.status == 400 and bad.error["field"] == "Idempotency-Key"
    # Keys are per client: the admin token's "order-9" is another key.
    assert api.post("/v1/invoices", body, headers=key).json["payment_hash"] != first.json["payment_hash"]


def test_list_qr_cancel_and_errors(api_daemon, api_of, simctl) -> None:
    api = api_of(api_daemon)
    made = [api.invoice(amount_sat=100 + i) for i in range(5)]
    simctl(api_daemon.simnet, "/invoices/settle", {"payment_hash": made[1]["payment_hash"]})
    api_daemon.wait_for(lambda: api.get(f"/v1/invoices/{made[1]['payment_hash']}").json["status"] == "paid")
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        page = api.get(f"/v1/invoices?limit=2{cursor}", role="readonly").json
        seen += [i["payment_hash"] for i in page["invoices"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert set(seen) == {m["payment_hash"] for m in made} and len(seen) == 5
    paid = api.get("/v1/invoices?status=paid", role="readonly").json["invoices"]
    assert [i["payment_hash"] for i in paid] == [made[1]["payment_hash"]]
    now = int(time.time())
    assert api.get(f"/v1/invoices?created_after={now + 100}").json["invoices"] == []
    assert api.get("/v1/invoices?status=bogus").error["field"] == "query.status"
    assert api.get("/v1/invoices?limit=0").error["field"] == "query.limit"
    assert api.get("/v1/invoices?cursor=zzz").error["field"] == "query.cursor"

    h = made[0]["payment_hash"]
    svg = api.get(f"/v1/invoices/{h}/qr.svg", role="readonly")
    assert (
        svg.status == 200 and svg.headers["content-type"].startswith("image/svg+xml") and b"<svg" in svg.raw
    )
    png = api.get(f"/v1/invoices/{h}/qr.png", role="readonly")
    assert (
        png.status == 200
        and png.headers["content-type"] == "image/png"
        and png.raw[:8] == b"\x89PNG\r\n\x1a\n"
    )

    canceled = api.post(f"/v1/invoices/{h}/cancel", role="invoice")
    assert canceled.status == 200 and canceled.json["status"] == "canceled"
    api_daemon.wait_for(lambda: api.get(f"/v1/invoices/{h}").json["status"] == "canceled")
    assert api.post(f"/v1/invoices/{h}/cancel", role="invoice").status == 409
    assert api.post(f"/v1/invoices/{made[1]['payment_hash']}/cancel", role="invoice").status == 409

    assert api.get(f"/v1/invoices/{ZERO_HASH}").status == 404
    for bad in ("xyz", "ab" * 33, "g" * 64):
        reply = api.get(f"/v1/invoices/{bad}")
        assert reply.status == 400 and reply.error["field"] == "payment_hash"
    assert api.get("/v1/nothing-here").error["code"] == "not_found"


def test_roles(api_daemon, api_of) -> None:
    api = api_of(api_daemon)
    h = api.invoice()["payment_hash"]
    # (method, path, body, least role)
    matrix = [
        ("GET", "/v1/invoices", None, "readonly"),
        ("GET", f"/v1/invoices/{h}", None, "readonly"),
        ("GET", f"/v1/invoices/{h}/qr.svg", None, "readonly"),
        ("GET", "/v1/node", None, "readonly"),
        ("POST", "/v1/decode", {"payment_request": "lnbcrt1x"}, "readonly"),
        ("POST", "/v1/invoices", {"amount_sat": 1}, "invoice"),
        ("GET", "/v1/balances", None, "admin"),
        ("GET", "/v1/payments", None, "admin"),
        ("GET", f"/v1/payments/{ZERO_HASH}", None, "admin"),
        ("POST", "/v1/payments", {"payment_request": "lnbcrt1x", "fee_limit_msat": 1}, "admin"),
        ("GET", "/v1/channels", None, "admin"),
    ]
    order = ["readonly", "invoice", "admin"]
    for method, path, body, least in matrix:
        assert api.call(method, path, body, role=None).status == 401, path
        for role in order:
            status = api.call(method, path, body, role=role).status
            if order.index(role) < order.index(least):
                assert status == 403, (path, role, status)
            else:
                assert status not in (401, 403), (path, role, status)
    wrong = api.call("GET", "/v1/node", role=None, headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status == 401 and "not-a-token" not in wrong.raw.decode()
    assert api.get("/v1/health", role=None).status == 200
    assert api.get("/v1/openapi.json", role=None).status == 200


def test_node_balances_decode_payments(api_daemon, api_of, simctl) -> None:
    api = api_of(api_daemon)
    node = api.get("/v1/node", role="readonly").json
    assert (len(node["pubkey"]) == 66 and node["chain"]) or node["network"]
    balances = api.get("/v1/balances").json
    assert balances["onchain_total_sat"] >= 0 and "channels_local_msat" in balances

    state = simctl(api_daemon.simnet, "/state")
    peer = state["channel_list"][0]["peer"]
    ext = simctl(
        api_daemon.simnet, "/external-invoice", {"peer": peer, "value_msat": 50_000, "memo": "pay me"}
    )
    decoded = api.post("/v1/decode", {"payment_request": ext["payment_request"]}, role="readonly").json
    assert decoded["payment_hash"] == ext["payment_hash"] and decoded["amount_msat"] == 50_000
    assert decoded["destination"] == peer and decoded["description"] == "pay me"
    for bad in ("hello", "lnbcrt1qqqqqqqqqqqqq", ""):
        reply = api.post("/v1/decode", {"payment_request": bad}, role="readonly")
        assert reply.status == 400 and reply.error["field"] == "payment_request", reply.raw

    paid = api.post(
        "/v1/payments",
        {"payment_request": ext["payment_request"], "fee_limit_msat": 1000, "timeout_seconds": 10},
    )
    assert paid.status == 200, paid.raw
    assert paid.json["status"] == "succeeded" and paid.json["preimage"] == ext["preimage"]
    got = api.get(f"/v1/payments/{ext['payment_hash']}").json
    assert got["status"] == "succeeded" and got["amount_msat"] == 50_000
    listed = api.get("/v1/payments?status=succeeded").json["payments"]
    assert ext["payment_hash"] in [p["payment_hash"] for p in listed]

    simctl(api_daemon.simnet, "/payments/fail-next", {"reason": "NO_ROUTE"})
    ext2 = simctl(api_daemon.simnet, "/external-invoice", {"peer": peer, "value_msat": 10_000})
    failed = api.post("/v1/payments", {"payment_request": ext2["payment_request"], "fee_limit_msat": 10})
    assert failed.status == 200 and failed.json["status"] == "failed"
    assert failed.json["failure_reason"] == "FAILURE_REASON_NO_ROUTE"
    assert (
        api.post("/v1/payments", {"payment_request": ext2["payment_request"]}).error["field"]
        == "fee_limit_msat"
    )
    assert api.post("/v1/payments", {"payment_request": "nope", "fee_limit_msat": 1}).status == 400
    assert api.get(f"/v1/payments/{ZERO_HASH}").status == 404


def test_channels(api_daemon, api_of, simctl) -> None:
    api = api_of(api_daemon)
    listed = api.get("/v1/channels").json
    assert listed["channels"], listed
    chan = listed["channels"][0]
    peer = chan["remote_pubkey"]
    opened = api.post("/v1/channels", {"node_pubkey": peer, "local_funding_amount_sat": 250_000})
    assert opened.status == 201, opened.raw
    point = opened.json["channel_point"]
    pending = api.get("/v1/channels").json["pending"]
    assert point in [p["channel_point"] for p in pending]
    for body, field in (
        ({"node_pubkey": "02zz", "local_funding_amount_sat": 250_000}, "node_pubkey"),
        ({"node_pubkey": peer, "local_funding_amount_sat": 10}, "local_funding_amount_sat"),
        ({"node_pubkey": peer, "local_funding_amount_sat": 30_000, "push_sat": 40_000}, "push_sat"),
    ):
        reply = api.post("/v1/channels", body)
        assert reply.status == 400 and reply.error["field"] == field, reply.raw
    closed = api.call("DELETE", f"/v1/channels/{chan['channel_point']}")
    assert closed.status == 200 and len(closed.json["closing_txid"]) == 64, closed.raw
    other = api.get("/v1/channels").json["channels"]
    if len(other) > 1:
        forced = api.call("DELETE", f"/v1/channels/{other[1]['channel_point']}?force=true")
        assert forced.status == 200, forced.raw
    assert api.call("DELETE", "/v1/channels/not-a-point").error["field"] == "channel_point"
    assert (
        api.call("DELETE", f"/v1/channels/{chan['channel_point']}?force=true&sat_per_vbyte=5").status == 400
    )
    assert api.get("/v1/channels", role="invoice").status == 403


def test_health_and_openapi(api_daemon, api_of) -> None:
    api = api_of(api_daemon)
    health = api.get("/v1/health", role=None).json
    assert health["ok"] is True, health
    assert health["lnd"]["reachable"] is True and health["database"]["ok"] is True
    assert "invoice_tracker" in health["plugins"] and health["plugins"]["invoice_tracker"]["lag"] >= 0
    doc = api.get("/v1/openapi.json", role=None).json
    assert doc["openapi"] == "3.1.0"
    for path in (
        "/v1/invoices",
        "/v1/invoices/{payment_hash}",
        "/v1/invoices/{payment_hash}/wait",
        "/v1/payments",
        "/v1/channels",
        "/v1/channels/{channel_point}",
        "/v1/events",
        "/v1/health",
        "/v1/node",
        "/v1/balances",
        "/v1/decode",
    ):
        assert path in doc["paths"], path


OWN_PREFIXES = (
    "/v1/invoices",
    "/v1/payments",
    "/v1/channels",
    "/v1/node",
    "/v1/balances",
    "/v1/decode",
    "/v1/events",
    "/v1/health",
    "/v1/openapi.json",
)


def test_every_endpoint_is_documented(api_daemon, api_of) -> None:
    doc = api_of(api_daemon).get("/v1/openapi.json", role=None).json
    text = (Path(__file__).parents[3] / "docs" / "http-api.md").read_text()
    ours = [
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method in ops
        if path.startswith(OWN_PREFIXES)
    ]
    assert len(ours) >= 18
    missing = [f"{m} {p}" for m, p in ours if f"`{m} {p}`" not in text]
    assert not missing, f"docs/http-api.md lacks: {missing}"


def test_rate_limits_and_sse_heartbeat(ldp_daemon_factory, api_of, sse) -> None:
    daemon = ldp_daemon_factory(
        plugins={"http_api": {"rate_limits": {"general": "3/1m", "channels": "1/1h"}, "sse_heartbeat": 0.2}}
    )
    api = api_of(daemon)
    assert [api.get("/v1/node", role="readonly").status for _ in range(4)] == [200, 200, 200, 429]
    limited = api.get("/v1/node", role="readonly")
    assert limited.error["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert api.get("/v1/node", role="invoice").status == 200  # another client
    assert api.get("/v1/channels").status == 200
    assert api.get("/v1/channels").status == 429  # the channels group's own budget
    stream = sse(api, role="admin")
    deadline = time.monotonic() + 5
    while not any(c.startswith("keepalive") for c in stream.comments) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(c.startswith("keepalive") for c in stream.comments)
    assert api.get("/v1/events?types=nonsense", role="invoice").error["field"] == "query.types"


def test_invoice_endpoints_need_the_tracker(ldp_daemon_factory, api_of) -> None:
    daemon = ldp_daemon_factory(plugins={"invoice_tracker": {"enabled": False}})
    api = api_of(daemon)
    reply = api.post("/v1/invoices", {"amount_sat": 1}, role="invoice")
    assert reply.status == 503 and reply.error["code"] == "invoice_tracker_disabled"
    assert api.get(f"/v1/invoices/{ZERO_HASH}").status == 503
    assert api.get("/v1/node").status == 200


def test_invoices_created_and_paid_while_killed(api_daemon, api_of, simctl) -> None:
    api = api_of(api_daemon)
    before = api.invoice(amount_sat=700, metadata={"order": 1})
    api_daemon.kill9()
    simctl(api_daemon.simnet, "/invoices/settle", {"payment_hash": before["payment_hash"]})
    offline = simctl(api_daemon.simnet, "/invoices", {"value_msat": 42_000, "memo": "while down"})
    simctl(api_daemon.simnet, "/invoices/settle", {"payment_hash": offline["payment_hash"]})
    unpaid = simctl(api_daemon.simnet, "/invoices", {"value_msat": 1_000, "memo": "still open"})
    api_daemon.start()
    api = api_of(api_daemon)

    def state(h: str) -> str | None:
        reply = api.get(f"/v1/invoices/{h}")
        return reply.json["status"] if reply.status == 200 else None

    api_daemon.wait_for(lambda: state(before["payment_hash"]) == "paid", timeout=15)
    api_daemon.wait_for(lambda: state(offline["payment_hash"]) == "paid", timeout=15)
    api_daemon.wait_for(lambda: state(unpaid["payment_hash"]) == "pending", timeout=15)
    kept = api.get(f"/v1/invoices/{before['payment_hash']}").json
    assert kept["metadata"] == {"order": 1}
    assert api.get(f"/v1/invoices/{offline['payment_hash']}").json["memo"] == "while down"


def test_tokens_and_limits_reload_on_sighup(api_daemon, api_of) -> None:
    import signal

    from lightningd_py.cli import new_token, token_sha256
    from lightningd_py.demo import write_config

    api = api_of(api_daemon)
    assert api.get("/v1/node", role="readonly").status == 200
    fresh = new_token()
    data = api_daemon.config.data
    http = dict(data["plugins"]["http_api"])
    http["tokens"] = [{"name": "ops", "role": "readonly", "sha256": token_sha256(fresh)}]
    write_config(api_daemon.config.path, {**data, "plugins": {**data["plugins"], "http_api": http}})
    mark = len(api_daemon.notifications)
    api_daemon.signal(signal.SIGHUP)
    api_daemon.wait_notification("READY=1", 10, after=mark)
    assert api.get("/v1/node", role="readonly").status == 401  # the old token is gone
    reply = api.get("/v1/node", role=None, headers={"Authorization": f"Bearer {fresh}"})
    assert reply.status == 200
    assert api.get("/v1/balances", role=None, headers={"Authorization": f"Bearer {fresh}"}).status == 403
