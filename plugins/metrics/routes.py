"""The monitoring and analytics endpoints (``/v1/analytics/...``, role readonly).

Handlers read the plugin's own tables on reader connections and the node snapshot in
memory; the only LND call is the on-chain fee estimate of the fee analysis. Exports
stream page by page, so their memory use does not grow with the history.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lightningd_py.errors import LndError
from lightningd_py.web import ApiError, ApiRequest, RouteRegistry

from . import analytics
from .analytics import sat
from .export import history_item, iso, stream_export
from .models import ChannelDetail, ChannelsOut, FeesOut, HistoryPage, PaymentsOut, ReportOut, SummaryOut
from .queries import (
    ChannelQuery,
    ExportQuery,
    HistoryQuery,
    ReportQuery,
    StatsQuery,
    decode_cursor,
    encode_cursor,
)
from .snapshot import ChannelState, NodeSnapshot, parse_chan_id, short_channel_id

if TYPE_CHECKING:
    from lightningd_py.daemon import Daemon

    from .runtime import MetricsRuntime

__all__ = ["fiat_values", "register_routes"]

CENT = Decimal("0.01")
# What the listing says of a channel the snapshot does not have open.
_NOT_OPEN = {"open": False, "active": False}


def _window_dict(start: float, end: float) -> dict[str, Any]:
    return {"start": iso(start), "end": iso(end)}


def register_routes(daemon: Daemon, router: RouteRegistry, runtime: Callable[[], MetricsRuntime]) -> None:
    """Declare every analytics endpoint. ``runtime`` returns the started plugin's state
    (raising ApiError 503 until the plugin has started)."""
    api = _Analytics(daemon, runtime)
    tags = ("analytics",)
    add = router.add
    add(
        "GET",
        "/v1/analytics/summary",
        api.summary,
        role="readonly",
        response=SummaryOut,
        tags=tags,
        summary="Dashboard: node, balances, channel health, today's volume and fees",
    )
    add(
        "GET",
        "/v1/analytics/payments",
        api.payments,
        role="readonly",
        response=PaymentsOut,
        tags=tags,
        query=StatsQuery,
        summary="Payment statistics over a window: success rate, volume (sat and fiat), counts",
    )
    add(
        "GET",
        "/v1/analytics/channels",
        api.channels,
        role="readonly",
        response=ChannelsOut,
        tags=tags,
        query=StatsQuery,
        summary="Channel statistics and per-channel performance over a window",
    )
    add(
        "GET",
        "/v1/analytics/channels/{chan_id}",
        api.channel,
        role="readonly",
        response=ChannelDetail,
        tags=tags,
        query=ChannelQuery,
        summary="One channel's performance and balance ratio over time",
        responses={404: "unknown channel"},
    )
    add(
        "GET",
        "/v1/analytics/fees",
        api.fees,
        role="readonly",
        response=FeesOut,
        tags=tags,
        query=StatsQuery,
        summary="Fees earned, paid and spent on rebalancing; savings against on-chain transactions",
    )
    add(
        "GET",
        "/v1/analytics/history",
        api.history,
        role="readonly",
        response=HistoryPage,
        tags=tags,
        query=HistoryQuery,
        summary="Invoices, payments, forwards and rebalances in one paginated, filterable list",
    )
    add(
        "GET",
        "/v1/analytics/report",
        api.report,
        role="readonly",
        response=ReportOut,
        tags=tags,
        query=ReportQuery,
        summary="A day, week, month or year report with a per-day (per-month for a year) breakdown",
    )
    for fmt, media in (("csv", "text/csv"), ("json", "application/json")):
        add(
            "GET",
            f"/v1/analytics/export/{fmt}",
            functools.partial(api.export, fmt),
            role="readonly",
            tags=tags,
            query=ExportQuery,
            summary=f"The transaction history as a streamed {fmt.upper()} download, oldest first",
            content_type=media,
        )


class _Analytics:
    def __init__(self, daemon: Daemon, runtime: Callable[[], MetricsRuntime]) -> None:
        self._daemon = daemon
        self._runtime = runtime

    # ------------------------------------------------------------ helpers

    async def _activity(self, start: float, end: float) -> analytics.Activity:
        return await self._daemon.store.read(lambda c: analytics.activity(c, start, end))

    async def _rate(self, currency: str | None, required: bool) -> Decimal | None:
        if currency is None:
            return None
        rate = await self._daemon.hooks.first("ldp_exchange_rate", currency=currency)
        if rate is None and required:
            raise ApiError(
                503,
                "exchange_rate_unavailable",
                f"no exchange rate for {currency} is available",
                "query.currency",
            )
        return Decimal(str(rate)) if rate is not None else None

    async def _fiat(self, query_currency: str | None, amounts: dict[str, int]) -> dict[str, Any] | None:
        """Fiat values of msat amounts at the current rate: the query's currency (503
        when unavailable) or the configured default (left out when unavailable)."""
        currency = query_currency or self._runtime().settings.currency
        rate = await self._rate(currency, required=query_currency is not None)
        if rate is None:
            return None
        return fiat_values(currency, rate, amounts)

    # ------------------------------------------------------------ endpoints

    async def summary(self, request: ApiRequest) -> dict[str, Any]:
        rt = self._runtime()
        snap = rt.poller.snapshot
        node = self._daemon.node
        now = time.time()
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        today = await self._activity(midnight, now + 1)
        imbalanced = sum(1 for c in snap.channels if analytics.imbalanced(c.balance_ratio))
        return {
            "node": _node_dict(snap)
            | {"lnd_state": node.state, "lnd_active": node.active, "lnd_detail": node.detail},
            "balances": {
                "wallet_confirmed_sat": snap.wallet_confirmed_sat,
                "wallet_unconfirmed_sat": snap.wallet_unconfirmed_sat,
                "wallet_locked_sat": snap.wallet_locked_sat,
                "channels_local_sat": snap.local_balance_sat,
                "channels_remote_sat": snap.remote_balance_sat,
                "channels_capacity_sat": snap.capacity_sat,
                "total_sat": snap.wallet_confirmed_sat + snap.wallet_unconfirmed_sat + snap.local_balance_sat,
            },
            "channels": {
                "active": snap.active_channels,
                "inactive": snap.inactive_channels,
                "pending": snap.pending_channels,
                "imbalanced": imbalanced,
                "pending_htlcs": sum(c.pending_htlcs for c in snap.channels),
            },
            "today": {
                "window": _window_dict(midnight, now),
                "invoices": today.invoices(),
                "payments": today.payments(),
                "forwards": today.forwards(),
                "rebalances": today.rebalances(),
                "fees": today.fees(),
            },
        }

    async def payments(self, request: ApiRequest) -> dict[str, Any]:
        query: StatsQuery = request.query
        start, end = (t.timestamp() for t in query.window())
        act = await self._activity(start, end)
        outgoing, incoming = act.payments(), act.invoices()
        fiat = await self._fiat(
            query.currency,
            {
                "sent": outgoing["sent_msat"],
                "fees": outgoing["fees_msat"],
                "received": incoming["received_msat"],
            },
        )
        return {"window": _window_dict(start, end), "outgoing": outgoing, "incoming": incoming, "fiat": fiat}

    async def channels(self, request: ApiRequest) -> dict[str, Any]:
        query: StatsQuery = request.query
        start, end = (t.timestamp() for t in query.window())
        snap = self._runtime().poller.snapshot
        perf = await self._daemon.store.read(lambda c: analytics.channel_performance(c, start, end))
        known = await self._daemon.store.fetchall(
            "SELECT chan_id, channel_point, peer_pubkey, peer_alias, capacity_sat, opened, closed "
            "FROM metrics_channels WHERE closed IS NULL OR closed >= ?",
            (start,),
        )
        identities: dict[int, dict[str, Any]] = {r["chan_id"]: dict(r) for r in known}
        for ch in snap.channels:
            identities[ch.chan_id] = identities.get(ch.chan_id, {}) | _snapshot_identity(ch)
        for chan_id in perf:
            identities.setdefault(chan_id, {"chan_id": chan_id})
        live = {ch.chan_id: _live_state(ch) for ch in snap.channels}
        listing = [
            _channel_identity(identity)
            | live.get(chan_id, _NOT_OPEN)
            | {"performance": _performance_dict(perf.get(chan_id) or analytics.empty_performance())}
            for chan_id, identity in identities.items()
        ]
        listing.sort(key=lambda r: (-r["performance"]["fees_earned_msat"], r["chan_id"]))
        open_rows = [r for r in listing if r["open"]]
        ratios = [r["balance_ratio"] for r in open_rows]
        return {
            "window": _window_dict(start, end),
            "totals": {
                "open": len(open_rows),
                "active": snap.active_channels,
                "inactive": snap.inactive_channels,
                "pending": snap.pending_channels,
                "capacity_sat": snap.capacity_sat,
                "local_balance_sat": snap.local_balance_sat,
                "remote_balance_sat": snap.remote_balance_sat,
                "imbalanced": sum(1 for x in ratios if analytics.imbalanced(x)),
                "average_balance_ratio": round(sum(ratios) / len(ratios), 6) if ratios else None,
                "forwards": sum(r["performance"]["forwards_out"] for r in listing),
                "fees_earned_msat": sum(r["performance"]["fees_earned_msat"] for r in listing),
            },
            "channels": listing,
        }

    async def channel(self, request: ApiRequest) -> dict[str, Any]:
        query: ChannelQuery = request.query
        try:
            chan_id = parse_chan_id(request.path["chan_id"])
        except ValueError as exc:
            raise ApiError(400, "invalid_chan_id", f"path.chan_id: {exc}", "path.chan_id") from exc
        start, end = (t.timestamp() for t in query.window())
        snap = self._runtime().poller.snapshot
        current = next((c for c in snap.channels if c.chan_id == chan_id), None)

        def read(conn: Any) -> tuple[Any, Any, Any]:
            return (
                analytics.known_channel(conn, chan_id),
                analytics.channel_performance(conn, start, end, [chan_id])[chan_id],
                analytics.channel_series(conn, chan_id, start, end, query.points),
            )

        identity, perf, series = await self._daemon.store.read(read)
        if identity is None and current is None:
            raise ApiError(
                404, "unknown_channel", f"no channel {request.path['chan_id']} is known", "path.chan_id"
            )
        base = identity or {"chan_id": chan_id}
        if current is not None:
            base = base | _snapshot_identity(current)
        row = _channel_identity(base) | (_live_state(current) if current is not None else _NOT_OPEN)
        return row | {
            "window": _window_dict(start, end),
            "performance": _performance_dict(perf),
            "balance_series": series,
        }

    async def fees(self, request: ApiRequest) -> dict[str, Any]:
        query: StatsQuery = request.query
        start, end = (t.timestamp() for t in query.window())
        act = await self._activity(start, end)
        fees = act.fees()
        pays = act.payments()
        settings = self._runtime().settings
        try:
            feerate: float | None = float(
                await self._daemon.lnd.estimate_fee(settings.fee_estimate_target_conf)
            )
        except LndError:
            feerate = None
        onchain: dict[str, Any] = {
            "available": feerate is not None,
            "target_conf": settings.fee_estimate_target_conf,
            "fee_rate_sat_per_vbyte": feerate,
            "tx_vbytes": settings.onchain_tx_vbytes,
            "payments": pays["succeeded"],
            "onchain_cost_sat": None,
            "lightning_fees_sat": pays["fees_sat"],
            "savings_sat": None,
        }
        if feerate is not None:
            cost = round(pays["succeeded"] * feerate * settings.onchain_tx_vbytes, 3)
            onchain["onchain_cost_sat"] = cost
            onchain["savings_sat"] = round(cost - pays["fees_sat"], 3)
        forwards = act.forwards()
        fiat = await self._fiat(
            query.currency,
            {
                "earned": fees["earned_msat"],
                "paid": fees["paid_msat"],
                "rebalance": fees["rebalance_msat"],
                "net": fees["net_msat"],
            },
        )
        return {
            "window": _window_dict(start, end),
            **fees,
            "earned_ppm": round(forwards["fees_earned_msat"] * 1e6 / forwards["volume_msat"], 1)
            if forwards["volume_msat"]
            else None,
            "paid_ppm": pays["fee_ppm"],
            "onchain_comparison": onchain,
            "fiat": fiat,
        }

    async def export(self, fmt: str, request: ApiRequest) -> web.StreamResponse:
        return await stream_export(self._daemon.store, request, fmt)

    async def history(self, request: ApiRequest) -> dict[str, Any]:
        query: HistoryQuery = request.query
        start, end = query.bounds()
        after = decode_cursor(query.cursor) if query.cursor else None
        kinds, statuses, chan = query.kinds, query.statuses, query.channel
        rows = await self._daemon.store.read(
            lambda c: analytics.history_page(
                c,
                start=start,
                end=end,
                kinds=kinds,
                statuses=statuses,
                chan_id=chan,
                after=after,
                limit=query.limit + 1,
            )
        )
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        next_cursor = encode_cursor((rows[-1]["time"], rows[-1]["kind"], rows[-1]["id"])) if more else None
        return {"items": [history_item(r) for r in rows], "next_cursor": next_cursor}

    async def report(self, request: ApiRequest) -> dict[str, Any]:
        query: ReportQuery = request.query
        first, last = query.window()
        start, end = first.timestamp(), last.timestamp()
        step = 3600.0 if query.period == "day" else 86400.0

        def read(conn: Any) -> tuple[Any, Any, Any]:
            return (
                analytics.activity(conn, start, end),
                analytics.breakdown(conn, start, end, step),
                analytics.channel_performance(conn, start, end),
            )

        act, buckets, perf = await self._daemon.store.read(read)
        if query.period == "year":
            buckets = _by_month(buckets)
        top = sorted(perf.items(), key=lambda kv: -kv[1]["fees_earned_msat"])[:5]
        fees = act.fees()
        fiat = await self._fiat(
            query.currency,
            {
                "received": act.invoices()["received_msat"],
                "sent": act.payments()["sent_msat"],
                "fees_earned": fees["earned_msat"],
                "net_fees": fees["net_msat"],
            },
        )
        return {
            "period": query.period,
            "window": _window_dict(start, end),
            "invoices": act.invoices(),
            "payments": act.payments(),
            "forwards": act.forwards(),
            "rebalances": act.rebalances(),
            "fees": fees,
            "top_channels": [
                {"chan_id": c, "scid": short_channel_id(c), **_performance_dict(p)}
                for c, p in top
                if p["fees_earned_msat"] > 0
            ],
            "breakdown": [b | {"start": iso(b["start"])} for b in buckets],
            "fiat": fiat,
        }


def fiat_values(currency: str, rate: Decimal, amounts: dict[str, int]) -> dict[str, Any]:
    """msat amounts in fiat at ``rate`` (the price of 1 BTC), rounded to cents."""
    per_msat = rate / Decimal(100_000_000_000)
    values = {
        name: float((Decimal(msat) * per_msat).quantize(CENT, ROUND_HALF_UP))
        for name, msat in amounts.items()
    }
    return {"currency": currency, "rate": str(rate), **values}


def _node_dict(snap: NodeSnapshot) -> dict[str, Any]:
    return {
        "alias": snap.alias,
        "pubkey": snap.pubkey,
        "version": snap.version,
        "network": snap.network,
        "block_height": snap.block_height,
        "synced_to_chain": snap.synced_to_chain,
        "synced_to_graph": snap.synced_to_graph,
        "peers": snap.peers,
        "snapshot_time": iso(snap.taken_at) if snap.taken_at else None,
    }


def _channel_identity(row: dict[str, Any]) -> dict[str, Any]:
    chan_id = row["chan_id"]
    return {
        "chan_id": chan_id,
        "scid": short_channel_id(chan_id),
        "channel_point": row.get("channel_point") or "",
        "peer_pubkey": row.get("peer_pubkey") or "",
        "peer_alias": row.get("peer_alias") or "",
        "capacity_sat": row.get("capacity_sat") or 0,
        "opened": iso(row["opened"]) if row.get("opened") else None,
        "closed": iso(row["closed"]) if row.get("closed") else None,
    }


def _snapshot_identity(ch: ChannelState) -> dict[str, Any]:
    """Identity fields of an open channel as the snapshot knows them (raw, as stored);
    an alias the snapshot lacks does not hide one recorded earlier."""
    fields = {
        "chan_id": ch.chan_id,
        "channel_point": ch.channel_point,
        "peer_pubkey": ch.peer_pubkey,
        "capacity_sat": ch.capacity_sat,
    }
    return fields | {"peer_alias": ch.peer_alias} if ch.peer_alias else fields


def _live_state(ch: ChannelState) -> dict[str, Any]:
    return {
        "open": True,
        "active": ch.active,
        "local_balance_sat": ch.local_balance_sat,
        "remote_balance_sat": ch.remote_balance_sat,
        "balance_ratio": round(ch.balance_ratio, 6),
        "pending_htlcs": ch.pending_htlcs,
    }


def _performance_dict(p: dict[str, Any]) -> dict[str, Any]:
    return p | {
        "volume_out_sat": sat(p["volume_out_msat"]),
        "fees_earned_sat": sat(p["fees_earned_msat"]),
    }


def _by_month(days: list[dict[str, Any]]) -> list[dict[str, Any]]:
    months: dict[str, dict[str, Any]] = {}
    for day in days:
        when = datetime.fromtimestamp(day["start"], UTC)
        key = f"{when.year:04d}-{when.month:02d}"
        if key not in months:
            months[key] = dict(day) | {"start": datetime(when.year, when.month, 1, tzinfo=UTC).timestamp()}
            continue
        month = months[key]
        for name, value in day.items():
            if name != "start":
                month[name] += value
    return list(months.values())
