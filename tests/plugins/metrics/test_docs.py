"""docs/metrics.md and the Grafana dashboard cannot drift from the metrics: every
family the plugin exports is documented, and every metric the dashboard queries is."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lightningd_py.plugins.metrics.collectors import ActivityCollector, NodeCollector
from lightningd_py.plugins.metrics.snapshot import ChannelState, NodeSnapshot, PollerStats
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[3]
DOCS = (ROOT / "docs" / "metrics.md").read_text()
DASHBOARD = json.loads((ROOT / "contrib" / "grafana" / "lightningd-py.json").read_text())


class _Poller:
    snapshot = NodeSnapshot(
        taken_at=1.0,
        channels=(
            ChannelState(
                chan_id=1 << 40,
                channel_point="00" * 32 + ":0",
                peer_pubkey="02" + "00" * 32,
                peer_alias="x",
                capacity_sat=1,
                local_balance_sat=1,
                remote_balance_sat=0,
                active=True,
                private=False,
                pending_htlcs=0,
            ),
        ),
    )
    stats = PollerStats()


class _Ledger:
    totals: dict = {}


def documented() -> set[str]:
    return set(re.findall(r"`(lightningd_[a-z0-9_]+)`", DOCS))


def test_every_exported_family_is_documented() -> None:
    registry = CollectorRegistry()
    registry.register(NodeCollector(_Poller()))
    registry.register(ActivityCollector(_Ledger()))
    names = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names.update(s.name for s in family.samples)
    assert names, "no metrics exported"
    assert names - documented() == set()


def test_every_metric_the_dashboard_queries_is_documented() -> None:
    exprs = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DASHBOARD)
    used = {re.sub(r"_bucket$", "", m) for e in exprs for m in re.findall(r"lightningd_[a-z0-9_]+", e)}
    assert len(exprs) > 20
    assert used - documented() == set()
