"""The Prometheus exposition: every family and value, read back with a real parser,
checked by promtool, and served over real HTTP by the plugin's own server."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from decimal import Decimal

import aiohttp
import pytest
from lightningd_py.plugins.metrics.collectors import ActivityCollector, NodeCollector
from lightningd_py.plugins.metrics.ledger import Total
from lightningd_py.plugins.metrics.routes import fiat_values
from lightningd_py.plugins.metrics.server import MetricsServer
from lightningd_py.plugins.metrics.snapshot import ChannelState, NodeSnapshot, PollerStats, short_channel_id
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lightningd_py.demo import free_port


class FakePoller:
    """Stands in for the poller's two attributes the collector reads (its snapshot is
    what the poller would have built from LND)."""

    def __init__(self, snapshot: NodeSnapshot, stats: PollerStats) -> None:
        self.snapshot = snapshot
        self.stats = stats


class Totals:
    def __init__(self, totals: dict[str, Total]) -> None:
        self.totals = totals


CHANNELS = tuple(
    ChannelState(
        chan_id=(700_000 + i) << 40 | (i << 16) | 1,
        channel_point=f"{i:064x}:1",
        peer_pubkey="03" + f"{i:064x}",
        peer_alias=f'peer "{i}"\\',
        capacity_sat=1_000_000,
        local_balance_sat=250_000 * i,
        remote_balance_sat=1_000_000 - 250_000 * i - 3_000,
        active=i != 2,
        private=False,
        pending_htlcs=i,
    )
    for i in range(3)
)
SNAPSHOT = NodeSnapshot(
    taken_at=1_790_000_000.5,
    version="0.18.3-beta",
    alias="alice",
    pubkey="02" + "ab" * 32,
    network="regtest",
    block_height=812_345,
    synced_to_chain=True,
    synced_to_graph=False,
    peers=4,
    pending_channels=2,
    channels=CHANNELS,
    wallet_confirmed_sat=5_000_000,
    wallet_unconfirmed_sat=12_345,
    wallet_locked_sat=100,
)
TOTALS = {
    "invoice.created": Total(3, 355_000, 0, 4),
    "invoice.settled": Total(1, 100_000, 0, 3),
    "invoice.expired": Total(1, 5_000, 0, 5),
    "payment.succeeded": Total(2, 1_500_000, 1_200, 8),
    "payment.failed": Total(1, 50_000, 0, 7),
    "forward.settled": Total(2, 2_700_000, 1_500, 12),
    "forward.failed": Total(1, 9_900, 0, 13),
    "rebalance.succeeded": Total(1, 500_000, 200, 9),
    "rebalance.failed": Total(1, 300_000, 0, 10),
}


def registry_with(snapshot: NodeSnapshot, stats: PollerStats, totals: dict[str, Total]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(NodeCollector(FakePoller(snapshot, stats)))
    registry.register(ActivityCollector(Totals(totals)))
    return registry


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_node_and_activity_metric_has_its_value(promtool: Callable[[bytes], None]) -> None:
    text = generate_latest(
        registry_with(SNAPSHOT, PollerStats(refreshes=3, failures=1, up=True, last_duration=0.25), TOTALS)
    )
    got = samples(text.decode())
    expected = {
        ("lightningd_node_snapshot_up", ()): 1,
        ("lightningd_node_snapshot_failures_total", ()): 1,
        ("lightningd_node_snapshot_timestamp_seconds", ()): 1_790_000_000.5,
        ("lightningd_node_snapshot_duration_seconds", ()): 0.25,
        (
            "lightningd_node_info",
            (
                ("alias", "alice"),
                ("network", "regtest"),
                ("pubkey", "02" + "ab" * 32),
                ("version", "0.18.3-beta"),
            ),
        ): 1,
        ("lightningd_node_block_height", ()): 812_345,
        ("lightningd_node_synced_to_chain", ()): 1,
        ("lightningd_node_synced_to_graph", ()): 0,
        ("lightningd_node_peers", ()): 4,
        ("lightningd_node_channels", (("state", "active"),)): 2,
        ("lightningd_node_channels", (("state", "inactive"),)): 1,
        ("lightningd_node_channels", (("state", "pending"),)): 2,
        ("lightningd_wallet_balance_sat", (("state", "confirmed"),)): 5_000_000,
        ("lightningd_wallet_balance_sat", (("state", "unconfirmed"),)): 12_345,
        ("lightningd_wallet_balance_sat", (("state", "locked"),)): 100,
        ("lightningd_channels_capacity_sat", ()): 3_000_000,
        ("lightningd_channels_local_balance_sat", ()): 750_000,
        ("lightningd_channels_remote_balance_sat", ()): 3_000_000 - 750_000 - 9_000,
        ("lightningd_invoices_created_total", ()): 3,
        ("lightningd_invoices_created_msat_total", ()): 355_000,
        ("lightningd_invoices_settled_total", ()): 1,
        ("lightningd_invoices_settled_msat_total", ()): 100_000,
        ("lightningd_invoices_canceled_total", ()): 0,
        ("lightningd_invoices_expired_total", ()): 1,
        ("lightningd_payments_total", (("result", "succeeded"),)): 2,
        ("lightningd_payments_total", (("result", "failed"),)): 1,
        ("lightningd_payments_msat_total", (("result", "succeeded"),)): 1_500_000,
        ("lightningd_payments_msat_total", (("result", "failed"),)): 50_000,
        ("lightningd_payments_fees_msat_total", ()): 1_200,
        ("lightningd_forwards_total", (("result", "settled"),)): 2,
        ("lightningd_forwards_total", (("result", "failed"),)): 1,
        ("lightningd_forwards_msat_total", ()): 2_700_000,
        ("lightningd_forwards_fees_msat_total", ()): 1_500,
        ("lightningd_rebalances_total", (("result", "succeeded"),)): 1,
        ("lightningd_rebalances_total", (("result", "failed"),)): 1,
        ("lightningd_rebalances_total", (("result", "dry_run"),)): 0,
        ("lightningd_rebalances_msat_total", ()): 500_000,
        ("lightningd_rebalances_fees_msat_total", ()): 200,
    }
    for ch in CHANNELS:
        labels = (("peer_alias", ch.peer_alias), ("scid", short_channel_id(ch.chan_id)))
        both = ch.local_balance_sat + ch.remote_balance_sat
        expected |= {
            ("lightningd_channel_capacity_sat", labels): ch.capacity_sat,
            ("lightningd_channel_local_balance_sat", labels): ch.local_balance_sat,
            ("lightningd_channel_remote_balance_sat", labels): ch.remote_balance_sat,
            ("lightningd_channel_balance_ratio", labels): ch.local_balance_sat / both,
            ("lightningd_channel_active", labels): int(ch.active),
            ("lightningd_channel_pending_htlcs", labels): ch.pending_htlcs,
        }
    assert got == pytest.approx(expected)
    promtool(text)


def test_node_families_wait_for_the_first_snapshot(promtool: Callable[[bytes], None]) -> None:
    text = generate_latest(registry_with(NodeSnapshot(), PollerStats(failures=2), {})).decode()
    names = {name for name, _ in samples(text)}
    assert "lightningd_node_block_height" not in names and "lightningd_channel_capacity_sat" not in names
    assert samples(text)[("lightningd_node_snapshot_up", ())] == 0
    assert samples(text)[("lightningd_invoices_settled_total", ())] == 0
    promtool(text.encode())


def test_short_channel_id() -> None:
    assert short_channel_id((812_345 << 40) | (1_234 << 16) | 3) == "812345x1234x3"


@pytest.mark.anyio
async def test_the_endpoint_serves_text_openmetrics_and_gzip() -> None:
    registry = registry_with(SNAPSHOT, PollerStats(up=True), TOTALS)
    server = MetricsServer(registry, f"127.0.0.1:{free_port()}")
    await server.start()
    url = f"http://{server.listen}/metrics"
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=")
                plain = await resp.read()
            async with http.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
                assert resp.headers["Content-Encoding"] == "gzip"
                assert gzip.decompress(await resp.read()) == plain
            async with http.get(
                url,
                headers={
                    "Accept": "application/openmetrics-text; version=1.0.0",
                    "Accept-Encoding": "identity",
                },
            ) as resp:
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await resp.read()).endswith(b"# EOF\n")
            async with http.get(f"http://{server.listen}/nothing") as resp:
                assert resp.status == 404
    finally:
        await server.stop()
    assert samples(plain.decode())[("lightningd_forwards_fees_msat_total", ())] == 1_500


def test_500_channels_collect_quickly() -> None:
    many = tuple(
        ChannelState(
            chan_id=(700_000 + i) << 40,
            channel_point=f"{i:064x}:0",
            peer_pubkey="03" + f"{i:064x}",
            peer_alias=f"peer{i}",
            capacity_sat=2_000_000,
            local_balance_sat=i * 1000,
            remote_balance_sat=1_000_000,
            active=True,
            private=False,
            pending_htlcs=0,
        )
        for i in range(500)
    )
    registry = registry_with(NodeSnapshot(taken_at=1.0, channels=many), PollerStats(up=True), TOTALS)
    generate_latest(registry)
    started = time.perf_counter()
    text = generate_latest(registry)
    elapsed = time.perf_counter() - started
    assert text.count(b"lightningd_channel_balance_ratio{") == 500
    # Generous bound for shared CI machines; bench/scrape.py measures the real figure.
    assert elapsed < 0.5


def test_fiat_values_round_to_cents_from_msat() -> None:
    # 1 BTC = 100,000,000,000 msat.
    got = fiat_values("EUR", Decimal("43210.50"), {"sent": 1_000_000_000, "fees": 1_234, "received": 0})
    assert got == {"currency": "EUR", "rate": "43210.50", "sent": 432.11, "fees": 0.0, "received": 0.0}
    assert fiat_values("USD", Decimal("100000"), {"x": 250_000_000_000})["x"] == 250_000.0
