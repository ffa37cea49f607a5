"""Prometheus collectors of the metrics plugin.

Both answer from memory only: ``NodeCollector`` from the poller's latest snapshot,
``ActivityCollector`` from the ledger's running totals. Neither calls LND nor the
database inside ``collect()``. The daemon's own metrics (journal, plugin workers,
database writer, LND link) are the core's, registered in the same registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .ledger import Total

if TYPE_CHECKING:
    from .ledger import Ledger
    from .snapshot import NodeSnapshot, PollerStats, SnapshotPoller

__all__ = ["ActivityCollector", "NodeCollector"]

PREFIX = "lightningd_"
_CHANNEL_LABELS = ["scid", "peer_alias"]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


class NodeCollector(Collector):
    """The node as the last snapshot saw it, plus how fresh that snapshot is.

    Node and channel families are left out until LND was reached once, so a daemon that
    never saw LND does not report zero balances as if they were real.
    """

    def __init__(self, poller: SnapshotPoller) -> None:
        self._poller = poller

    def describe(self) -> Iterator[Metric]:
        from .snapshot import NodeSnapshot, PollerStats

        return _node_families(NodeSnapshot(taken_at=1.0), PollerStats())

    def collect(self) -> Iterator[Metric]:
        return _node_families(self._poller.snapshot, self._poller.stats)


def _node_families(snap: NodeSnapshot, stats: PollerStats) -> Iterator[Metric]:
    yield _gauge(
        "node_snapshot_up", "1 when the last attempt to read the node from LND succeeded", int(stats.up)
    )
    failures = CounterMetricFamily(
        PREFIX + "node_snapshot_failures", "Attempts to read the node from LND that failed"
    )
    failures.add_metric([], stats.failures)
    yield failures
    yield _gauge(
        "node_snapshot_timestamp_seconds", "Unix time of the last successful read of the node", snap.taken_at
    )
    yield _gauge(
        "node_snapshot_duration_seconds", "Time the last read of the node from LND took", stats.last_duration
    )
    if not snap.taken_at:
        return
    info = InfoMetricFamily(PREFIX + "node", "The LND node: version, alias, public key and network")
    info.add_metric(
        [], {"version": snap.version, "alias": snap.alias, "pubkey": snap.pubkey, "network": snap.network}
    )
    yield info
    yield _gauge("node_block_height", "Best block height LND knows", snap.block_height)
    yield _gauge("node_synced_to_chain", "1 when LND is synced to the chain", int(snap.synced_to_chain))
    yield _gauge(
        "node_synced_to_graph", "1 when LND is synced to the channel graph", int(snap.synced_to_graph)
    )
    yield _gauge("node_peers", "Connected peers", snap.peers)
    channels = GaugeMetricFamily(PREFIX + "node_channels", "Channels by state", labels=["state"])
    active = snap.active_channels
    channels.add_metric(["active"], active)
    channels.add_metric(["inactive"], len(snap.channels) - active)
    channels.add_metric(["pending"], snap.pending_channels)
    yield channels
    wallet = GaugeMetricFamily(
        PREFIX + "wallet_balance_sat", "On-chain wallet balance by state, satoshi", labels=["state"]
    )
    wallet.add_metric(["confirmed"], snap.wallet_confirmed_sat)
    wallet.add_metric(["unconfirmed"], snap.wallet_unconfirmed_sat)
    wallet.add_metric(["locked"], snap.wallet_locked_sat)
    yield wallet
    yield _gauge("channels_capacity_sat", "Capacity of all open channels, satoshi", snap.capacity_sat)
    yield _gauge(
        "channels_local_balance_sat", "Local balance of all open channels, satoshi", snap.local_balance_sat
    )
    yield _gauge(
        "channels_remote_balance_sat", "Remote balance of all open channels, satoshi", snap.remote_balance_sat
    )
    capacity = GaugeMetricFamily(
        PREFIX + "channel_capacity_sat", "Channel capacity, satoshi", labels=_CHANNEL_LABELS
    )
    local = GaugeMetricFamily(
        PREFIX + "channel_local_balance_sat",
        "Channel balance on this node's side, satoshi",
        labels=_CHANNEL_LABELS,
    )
    remote = GaugeMetricFamily(
        PREFIX + "channel_remote_balance_sat",
        "Channel balance on the peer's side, satoshi",
        labels=_CHANNEL_LABELS,
    )
    ratio = GaugeMetricFamily(
        PREFIX + "channel_balance_ratio",
        "Local share of the channel's local plus remote balance (0..1)",
        labels=_CHANNEL_LABELS,
    )
    up = GaugeMetricFamily(PREFIX + "channel_active", "1 when the channel is active", labels=_CHANNEL_LABELS)
    htlcs = GaugeMetricFamily(
        PREFIX + "channel_pending_htlcs", "HTLCs in flight on the channel", labels=_CHANNEL_LABELS
    )
    for ch in snap.channels:
        labels = [ch.scid, ch.peer_alias]
        capacity.add_metric(labels, ch.capacity_sat)
        local.add_metric(labels, ch.local_balance_sat)
        remote.add_metric(labels, ch.remote_balance_sat)
        ratio.add_metric(labels, ch.balance_ratio)
        up.add_metric(labels, int(ch.active))
        htlcs.add_metric(labels, ch.pending_htlcs)
    yield from (capacity, local, remote, ratio, up, htlcs)


# name -> (metric suffix, help, label value) for counters with a result label.
_RESULTS = {
    "payments": ("Outgoing payments that reached a final state", ("payment.succeeded", "payment.failed")),
    "forwards": ("Forwarded HTLCs that were resolved", ("forward.settled", "forward.failed")),
    "rebalances": (
        "Rebalances the rebalancer finished",
        ("rebalance.succeeded", "rebalance.failed", "rebalance.dry_run"),
    ),
}


class ActivityCollector(Collector):
    """Counters of invoices, payments, forwards and rebalances, from durable totals (they
    survive restarts; no per-invoice or per-payment labels)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def describe(self) -> Iterator[Metric]:
        return _activity_families({})

    def collect(self) -> Iterator[Metric]:
        return _activity_families(self._ledger.totals)


def _activity_families(totals: dict[str, Total]) -> Iterator[Metric]:
    empty = Total()

    def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, doc)
        family.add_metric([], value)
        return family

    created = totals.get("invoice.created", empty)
    settled = totals.get("invoice.settled", empty)
    yield counter("invoices_created", "Invoices created", created.count)
    yield counter(
        "invoices_created_msat", "Amount requested by created invoices, millisatoshi", created.amount_msat
    )
    yield counter("invoices_settled", "Invoices paid", settled.count)
    yield counter(
        "invoices_settled_msat", "Amount received by paid invoices, millisatoshi", settled.amount_msat
    )
    yield counter("invoices_canceled", "Invoices canceled", totals.get("invoice.canceled", empty).count)
    yield counter(
        "invoices_expired", "Invoices that expired unpaid", totals.get("invoice.expired", empty).count
    )

    for noun, (doc, names) in _RESULTS.items():
        count = CounterMetricFamily(PREFIX + noun, doc + ", by result", labels=["result"])
        for name in names:
            count.add_metric([name.split(".", 1)[1]], totals.get(name, empty).count)
        yield count
    sent = CounterMetricFamily(
        PREFIX + "payments_msat",
        "Amount of outgoing payments (fees excluded), millisatoshi, by result",
        labels=["result"],
    )
    for name in _RESULTS["payments"][1]:
        sent.add_metric([name.split(".", 1)[1]], totals.get(name, empty).amount_msat)
    yield sent
    yield counter(
        "payments_fees_msat",
        "Routing fees paid by succeeded payments, millisatoshi",
        totals.get("payment.succeeded", empty).fee_msat,
    )
    forwarded = totals.get("forward.settled", empty)
    yield counter(
        "forwards_msat",
        "Amount forwarded by settled forwards (outgoing side), millisatoshi",
        forwarded.amount_msat,
    )
    yield counter("forwards_fees_msat", "Fees earned by settled forwards, millisatoshi", forwarded.fee_msat)
    moved = totals.get("rebalance.succeeded", empty)
    yield counter("rebalances_msat", "Amount moved by succeeded rebalances, millisatoshi", moved.amount_msat)
    yield counter("rebalances_fees_msat", "Fees paid by succeeded rebalances, millisatoshi", moved.fee_msat)
