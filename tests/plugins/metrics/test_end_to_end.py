"""The metrics plugin in a real daemon against simnet, over real HTTP.

Scripted activity with known figures (invoices created and paid from outside, forwards
through chosen channels, payments that succeed and fail) must show up exactly in the
Prometheus scrape and in every analytics endpoint; the whole scrape passes promtool;
bad query parameters are 4xx naming the parameter.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from lightningd_py.plugins.metrics import models
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http(
    url: str, token: str | None = None, body: Any = None, method: str | None = None
) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def api(daemon: Any, path: str, role: str = "readonly", body: Any = None) -> tuple[int, Any]:
    status, _, raw = http(daemon.api_url + path, daemon.tokens[role], body)
    return status, json.loads(raw) if raw else None


def scrape(daemon: Any) -> tuple[bytes, Samples]:
    status, _, raw = http(daemon.config.metrics_url)
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return raw, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def node(ldp_daemon_factory: Any) -> Any:
    daemon = ldp_daemon_factory(plugins={"metrics": {"refresh_interval": 1.0, "sample_interval": 10.0}})

    # READY comes before LND is active (LND may stay locked for long): wait for both
    # the link and the first node snapshot.
    def lnd_ready() -> bool:
        _, s = scrape(daemon)
        return value(s, "lightningd_lnd_up") == 1 and value(s, "lightningd_node_snapshot_up") == 1

    daemon.wait_for(lnd_ready, timeout=20)
    return daemon


def test_scripted_activity_in_metrics_and_analytics(node: Any, promtool: Callable[[bytes], None]) -> None:
    control = node.simnet.control
    channels = [c for c in control.state()["channel_list"] if c["status"] == "open" and c["active"]]
    a, b, c = (int(ch["chan_id"]) for ch in channels[:3])
    # Known balances so every forward below has the liquidity it needs.
    for ch in channels[:3]:
        control.set_balance(ch["chan_id"], ch["capacity_sat"] * 500)

    invoices = [
        control.add_invoice(value_msat=v, memo=f"m{i}") for i, v in enumerate((100_000, 250_000, 5_000))
    ]
    for inv in invoices[:2]:
        control.settle_invoice(inv["payment_hash"])
    control.forward(a, b, 2_000_000, fee_msat=1_000)
    control.forward(b, c, 700_000, fee_msat=500)
    control.forward(a, c, 10_000, fee_msat=100, fail=True)
    peer = channels[0]["peer"]
    ok = control.external_invoice(peer, 1_000_000, memo="pay me")
    status, paid = api(
        node, "/v1/payments", "admin", {"payment_request": ok["payment_request"], "fee_limit_msat": 50_000}
    )
    assert status in (200, 201) and paid["status"] == "succeeded", paid
    control.fail_next_payment("FAILURE_REASON_NO_ROUTE")
    bad = control.external_invoice(peer, 30_000)
    status, failed = api(
        node, "/v1/payments", "admin", {"payment_request": bad["payment_request"], "fee_limit_msat": 50_000}
    )
    assert failed["status"] == "failed", failed
    fee_paid = paid["fee_msat"]
    # A rebalance: a circular payment to an invoice of our own, through two channels.
    out_chan, in_chan = channels[3], channels[4]
    control.set_balance(out_chan["chan_id"], out_chan["capacity_sat"] * 900)
    control.set_balance(in_chan["chan_id"], in_chan["capacity_sat"] * 100)
    status, rebalance = api(
        node,
        "/v1/rebalance/execute",
        "admin",
        {
            "outgoing_chan_id": int(out_chan["chan_id"]),
            "incoming_chan_id": int(in_chan["chan_id"]),
            "amount_sat": 10_000,
            "max_fee_ppm": 20_000,
            "dry_run": False,
            "ignore_economics": True,
        },
    )
    assert status == 200 and rebalance["status"] == "succeeded", rebalance
    moved, rebalance_fee = rebalance["moved_msat"], rebalance["fee_msat"]

    def caught_up() -> Samples | None:
        _, s = scrape(node)
        done = (
            value(s, "lightningd_forwards_total", result="failed") == 1
            and value(s, "lightningd_payments_total", result="failed") == 1
            and value(s, "lightningd_invoices_settled_total") == 3
            and value(s, "lightningd_rebalances_total", result="succeeded") == 1
            and value(s, "lightningd_plugin_cursor_lag_events", plugin="metrics") == 0
        )
        return s if done else None

    s = node.wait_for(caught_up, timeout=20)
    # Balances moved by the activity: wait for a snapshot taken after all of it.
    state = control.state()
    by_id = {int(ch["chan_id"]): ch for ch in state["channel_list"] if ch["status"] == "open"}

    def channel_gauges(s: Samples) -> dict[str, dict[str, float]]:
        by_scid: dict[str, dict[str, float]] = {}
        for (name, labels), v in s.items():
            if name.startswith("lightningd_channel_"):
                by_scid.setdefault(dict(labels)["scid"], {})[name.removeprefix("lightningd_channel_")] = v
        return by_scid

    expected_channels = {}
    for chan_id, ch in by_id.items():
        local, remote = ch["local_msat"] // 1000, ch["remote_msat"] // 1000
        expected_channels[f"{chan_id >> 40}x{(chan_id >> 16) & 0xFFFFFF}x{chan_id & 0xFFFF}"] = {
            "capacity_sat": ch["capacity_sat"],
            "local_balance_sat": local,
            "remote_balance_sat": remote,
            "balance_ratio": local / (local + remote),
            "active": int(ch["active"]),
            "pending_htlcs": 0,
        }
    node.wait_for(lambda: channel_gauges(scrape(node)[1]) == expected_channels, timeout=10)
    raw, s = scrape(node)
    promtool(raw)

    # Prometheus counts what LND did: the rebalance's invoice and payment are in the
    # invoice and payment counters too.
    assert value(s, "lightningd_invoices_created_total") == 4
    assert value(s, "lightningd_invoices_created_msat_total") == 355_000 + moved
    assert value(s, "lightningd_invoices_settled_msat_total") == 350_000 + moved
    assert value(s, "lightningd_payments_total", result="succeeded") == 2
    assert value(s, "lightningd_payments_msat_total", result="succeeded") == 1_000_000 + moved
    assert value(s, "lightningd_payments_msat_total", result="failed") == 30_000
    assert value(s, "lightningd_payments_fees_msat_total") == fee_paid + rebalance_fee
    assert value(s, "lightningd_forwards_total", result="settled") == 2
    assert value(s, "lightningd_forwards_msat_total") == 2_700_000
    assert value(s, "lightningd_forwards_fees_msat_total") == 1_500
    assert value(s, "lightningd_rebalances_total", result="failed") == 0
    assert value(s, "lightningd_rebalances_msat_total") == moved
    assert value(s, "lightningd_rebalances_fees_msat_total") == rebalance_fee
    assert value(s, "lightningd_node_snapshot_up") == 1
    open_now = [ch for ch in state["channel_list"] if ch["status"] == "open"]
    assert value(s, "lightningd_node_channels", state="active") == sum(1 for ch in open_now if ch["active"])
    assert value(s, "lightningd_channels_local_balance_sat") == sum(
        ch["local_msat"] // 1000 for ch in open_now
    )
    assert value(s, "lightningd_channels_capacity_sat") == sum(ch["capacity_sat"] for ch in open_now)
    info = [k for k in s if k[0] == "lightningd_node_info"]
    assert len(info) == 1 and dict(info[0][1])["alias"] == state["info"].get(
        "alias", dict(info[0][1])["alias"]
    )

    # ---------------------------------------------------------------- analytics
    status, summary = api(node, "/v1/analytics/summary")
    models.SummaryOut.model_validate(summary)  # the documented shape, exactly
    assert status == 200
    assert summary["today"]["invoices"]["settled"] == 2
    assert summary["today"]["forwards"]["fees_earned_msat"] == 1_500
    assert summary["channels"]["active"] == value(s, "lightningd_node_channels", state="active")
    assert summary["balances"]["channels_local_sat"] == value(s, "lightningd_channels_local_balance_sat")

    status, pays = api(node, "/v1/analytics/payments")
    models.PaymentsOut.model_validate(pays)  # the documented shape, exactly
    assert status == 200
    assert pays["outgoing"] | {"fee_ppm": None, "average_sat": None} == {
        "succeeded": 1,
        "failed": 1,
        "success_rate": 0.5,
        "sent_msat": 1_000_000,
        "sent_sat": 1000.0,
        "fees_msat": fee_paid,
        "fees_sat": fee_paid / 1000,
        "fee_ppm": None,
        "average_sat": None,
    }
    assert pays["incoming"]["created"] == 3
    assert (pays["incoming"]["settled"], pays["incoming"]["received_msat"]) == (2, 350_000)
    assert pays["fiat"] is None

    # The analytics set the rebalance's own invoice and payment apart.
    assert summary["today"]["rebalances"] | {"moved_sat": 0, "fees_sat": 0} == {
        "succeeded": 1,
        "failed": 0,
        "dry_run": 0,
        "moved_msat": moved,
        "moved_sat": 0,
        "fees_msat": rebalance_fee,
        "fees_sat": 0,
    }

    status, fees = api(node, "/v1/analytics/fees")
    models.FeesOut.model_validate(fees)  # the documented shape, exactly
    assert status == 200
    assert (fees["earned_msat"], fees["paid_msat"], fees["rebalance_msat"]) == (
        1_500,
        fee_paid,
        rebalance_fee,
    )
    assert fees["net_msat"] == 1_500 - fee_paid - rebalance_fee
    comparison = fees["onchain_comparison"]
    if comparison["available"]:
        expected = round(comparison["fee_rate_sat_per_vbyte"] * 141, 3)
        assert comparison["onchain_cost_sat"] == expected
        assert comparison["savings_sat"] == round(expected - fee_paid / 1000, 3)

    status, chans = api(node, "/v1/analytics/channels")
    models.ChannelsOut.model_validate(chans)  # the documented shape, exactly
    assert status == 200
    perf = {row["chan_id"]: row["performance"] for row in chans["channels"]}
    assert (perf[b]["forwards_out"], perf[b]["volume_out_msat"], perf[b]["fees_earned_msat"]) == (
        1,
        2_000_000,
        1_000,
    )
    assert (perf[c]["forwards_out"], perf[c]["fees_earned_msat"], perf[c]["forwards_failed_out"]) == (
        1,
        500,
        1,
    )
    assert (perf[a]["forwards_in"], perf[a]["volume_in_msat"]) == (1, 2_001_000)
    rb_out, rb_in = perf[int(out_chan["chan_id"])], perf[int(in_chan["chan_id"])]
    assert (rb_out["rebalanced_out_msat"], rb_out["rebalance_fees_msat"]) == (moved, rebalance_fee)
    assert rb_in["rebalanced_in_msat"] == moved
    assert chans["totals"]["fees_earned_msat"] == 1_500
    assert perf[a]["samples"] >= 1 and perf[a]["uptime"] == 1.0

    scid_b = f"{b >> 40}x{(b >> 16) & 0xFFFFFF}x{b & 0xFFFF}"
    status, one = api(node, f"/v1/analytics/channels/{scid_b}?points=10")
    models.ChannelDetail.model_validate(one)  # the documented shape, exactly
    assert status == 200 and one["chan_id"] == b and one["open"] is True
    assert one["performance"]["fees_earned_msat"] == 1_000
    assert one["balance_series"] and 0 <= one["balance_series"][-1]["balance_ratio"] <= 1

    status, page = api(node, "/v1/analytics/history?limit=3")
    models.HistoryPage.model_validate(page)  # the documented shape, exactly
    assert status == 200 and len(page["items"]) == 3 and page["next_cursor"]
    items = list(page["items"])
    while page["next_cursor"]:
        status, page = api(node, f"/v1/analytics/history?limit=3&cursor={page['next_cursor']}")
        items.extend(page["items"])
    kinds = sorted((i["kind"], i["status"]) for i in items)
    assert kinds == sorted(
        [("invoice", "settled")] * 2
        + [("invoice", "open")]
        + [("forward", "settled")] * 2
        + [("forward", "failed")]
        + [("payment", "succeeded"), ("payment", "failed")]
        # The rebalance, and the invoice and payment it consisted of.
        + [("rebalance", "succeeded"), ("invoice", "settled"), ("payment", "succeeded")]
    )
    # An invoice is known by its payment hash, a payment by its hash and index.
    for item in items:
        if item["kind"] == "invoice":
            assert item["id"] == f"invoice:{item['payment_hash']}"
        elif item["kind"] == "payment":
            assert item["id"].startswith(f"payment:{item['payment_hash']}:")
    assert len({i["id"] for i in items}) == len(items)
    status, only = api(node, f"/v1/analytics/history?kind=forward&status=settled&chan_id={c}")
    assert [(i["amount_msat"], i["fee_msat"]) for i in only["items"]] == [(700_000, 500)]

    status, report = api(node, "/v1/analytics/report?period=day")
    models.ReportOut.model_validate(report)  # the documented shape, exactly
    assert status == 200
    assert report["forwards"]["fees_earned_msat"] == 1_500 and len(report["breakdown"]) == 24
    assert report["fees"]["net_msat"] == 1_500 - fee_paid - rebalance_fee
    assert report["payments"]["succeeded"] == 1 and report["invoices"]["settled"] == 2
    assert sum(h["fees_earned_msat"] for h in report["breakdown"]) == 1_500
    assert report["top_channels"][0]["chan_id"] == b

    status, headers, raw = http(node.api_url + "/v1/analytics/export/csv", node.tokens["readonly"])
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert headers.get("Transfer-Encoding") == "chunked"
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert len(rows) == len(items)
    assert sum(int(r["fee_msat"]) for r in rows if r["kind"] == "forward") == 1_500
    status, _, raw = http(node.api_url + "/v1/analytics/export/json?kind=invoice", node.tokens["readonly"])
    exported = json.loads(raw)
    assert sorted(i["amount_msat"] for i in exported) == sorted([5_000, 100_000, 250_000, moved])

    # The plugin's part of the health report.
    status, _, raw = http(node.api_url + "/v1/health")
    check = json.loads(raw)["checks"]["metrics"]
    assert status == 200 and check["ok"] is True and check["node_snapshot_ok"] is True
    assert check["listen"] == node.config.metrics_url.removeprefix("http://").removesuffix("/metrics")
    assert 0 <= check["node_snapshot_age_seconds"] < 10


BAD_REQUESTS = [
    ("/v1/analytics/payments?start=2026-02-30", 400, "query.start"),
    ("/v1/analytics/payments?start=2026-01-02&end=2026-01-01", 400, "query.end"),
    ("/v1/analytics/payments?currency=EURO", 400, "query.currency"),
    ("/v1/analytics/payments?currency=EUR", 503, "query.currency"),
    ("/v1/analytics/payments?bogus=1", 400, "query.bogus"),
    ("/v1/analytics/history?kind=refund", 400, "query.kind"),
    ("/v1/analytics/history?limit=0", 400, "query.limit"),
    ("/v1/analytics/history?cursor=nope", 400, "query.cursor"),
    ("/v1/analytics/history?chan_id=12x", 400, "query.chan_id"),
    ("/v1/analytics/report?period=decade", 400, "query.period"),
    ("/v1/analytics/export/csv?limit=5", 400, "query.limit"),
    ("/v1/analytics/export/xml", 404, None),
    ("/v1/analytics/channels/notachannel", 400, "path.chan_id"),
    ("/v1/analytics/channels/1x2x3", 404, "path.chan_id"),
    ("/v1/analytics/channels/1?points=0", 400, "query.points"),
]


def test_bad_parameters_name_the_field(ldp_daemon: Any) -> None:
    # One daemon for every case (a daemon per case would cost seconds each).
    answers = {path: api(ldp_daemon, path) for path, _, _ in BAD_REQUESTS}
    got = {
        path: (status, (body or {}).get("error", {}).get("field")) for path, (status, body) in answers.items()
    }
    assert got == {path: (status, field) for path, status, field in BAD_REQUESTS}
    status, _, _ = http(ldp_daemon.api_url + "/v1/analytics/summary")
    assert status == 401


def test_counters_survive_a_crash_exactly(node: Any) -> None:
    """Totals are durable and an event redelivered after kill -9 is not counted twice."""
    control = node.simnet.control
    amounts = (11_000, 22_000, 33_000, 44_000)
    for amount in amounts[:2]:
        control.settle_invoice(control.add_invoice(value_msat=amount)["payment_hash"])

    def settled(count: int) -> Any:
        def check() -> Samples | None:
            _, s = scrape(node)
            return s if value(s, "lightningd_invoices_settled_total") == count else None

        return check

    node.wait_for(settled(2), timeout=10)
    # Crash right after more activity: some of it handled, maybe not yet past the cursor.
    for amount in amounts[2:]:
        control.settle_invoice(control.add_invoice(value_msat=amount)["payment_hash"])
    node.kill9()
    node.start(timeout=20)
    node.wait_for(settled(4), timeout=20)
    node.wait_for(
        lambda: value(scrape(node)[1], "lightningd_plugin_cursor_lag_events", plugin="metrics") == 0
    )
    _, s = scrape(node)
    assert value(s, "lightningd_invoices_created_total") == 4
    assert value(s, "lightningd_invoices_settled_total") == 4
    assert value(s, "lightningd_invoices_settled_msat_total") == sum(amounts)
    status, page = api(node, "/v1/analytics/history?kind=invoice&status=settled")
    assert status == 200
    assert sorted(i["amount_msat"] for i in page["items"]) == sorted(amounts)


def test_lnd_going_away_marks_the_snapshot_down_and_back(node: Any) -> None:
    control = node.simnet.control
    _, before = scrape(node)
    control.lock()
    node.wait_for(lambda: value(scrape(node)[1], "lightningd_node_snapshot_up") == 0, timeout=20)
    _, s = scrape(node)
    # The last good snapshot stays exported, with its age visible.
    assert value(s, "lightningd_node_block_height") == value(before, "lightningd_node_block_height")
    stamp = value(s, "lightningd_node_snapshot_timestamp_seconds")
    control.unlock()
    node.wait_for(lambda: value(scrape(node)[1], "lightningd_node_snapshot_up") == 1, timeout=20)
    assert value(scrape(node)[1], "lightningd_node_snapshot_timestamp_seconds") > stamp


def test_channels_opened_and_closed_are_remembered(node: Any) -> None:
    control = node.simnet.control
    peer = control.state()["channel_list"][0]["peer"]
    opened = control.open_channel(peer, 2_000_000, confirm=True)
    chan_id = int(opened["chan_id"])

    def listed() -> dict | None:
        status, body = api(node, "/v1/analytics/channels")
        rows = [r for r in body["channels"] if r["chan_id"] == chan_id] if status == 200 else []
        return rows[0] if rows else None

    row = node.wait_for(lambda: (r := listed()) is not None and r["opened"] and r["open"] and r, timeout=15)
    assert row["capacity_sat"] == 2_000_000 and row["peer_pubkey"] == peer
    scid = f"{chan_id >> 40}x{(chan_id >> 16) & 0xFFFFFF}x{chan_id & 0xFFFF}"
    node.wait_for(
        lambda: any(
            k[0] == "lightningd_channel_capacity_sat" and ("scid", scid) in k[1] and v == 2_000_000
            for k, v in scrape(node)[1].items()
        ),
        timeout=10,
    )

    control.close_channel(chan_id, confirm=True)
    row = node.wait_for(
        lambda: (r := listed()) is not None and r["closed"] and not r["open"] and r, timeout=15
    )
    assert row["opened"] <= row["closed"]
    status, one = api(node, f"/v1/analytics/channels/{scid}")
    assert status == 200 and one["open"] is False and one["closed"] == row["closed"]
