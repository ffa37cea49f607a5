"""Statistics over the plugin's own tables, as plain functions of a sqlite connection.

Each function runs on a reader connection in a worker thread (``store.read``) and
returns JSON-ready dicts. Windows are half-open, ``start <= time < end``, in UTC unix
seconds. Amounts are reported in millisatoshi (``*_msat``) and satoshi (``*_sat``,
possibly fractional).

A rebalance is a payment to an invoice of this node: that payment and that invoice
(both named by the rebalance's payment hash) are counted as the rebalance, not as a
payment and a received invoice, so no amount or fee is counted twice.
"""

from __future__ import annotations

import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ledger import REBALANCE_INVOICE

__all__ = [
    "IMBALANCED_HIGH",
    "IMBALANCED_LOW",
    "Activity",
    "Figures",
    "activity",
    "breakdown",
    "channel_performance",
    "channel_series",
    "empty_performance",
    "grouped",
    "history_page",
    "imbalanced",
    "known_channel",
    "sat",
]

# A channel whose local share is outside these bounds is reported as imbalanced.
IMBALANCED_LOW = 0.2
IMBALANCED_HIGH = 0.8

HOUR = 3600

# Rows sharing a payment hash with a rebalance (``t``): driven from the few rebalances
# through the hash index, which holds every kind but invoices, and of invoices only the
# rebalancer's own (by their memo), never by reading the window's rows.
_REBALANCE_HASHES = (
    "(SELECT DISTINCT payment_hash AS h FROM metrics_tx WHERE kind = 'rebalance' AND payment_hash != '')"
)
_REBALANCE_OWN = (
    f"(SELECT t.* FROM {_REBALANCE_HASHES} AS r "
    "CROSS JOIN metrics_tx AS t ON t.payment_hash = r.h AND t.payment_hash != '' "
    f"AND (t.kind != 'invoice' OR {REBALANCE_INVOICE})) AS t"
)


def imbalanced(ratio: float) -> bool:
    """Whether a channel's local share is outside the healthy band."""
    return not IMBALANCED_LOW <= ratio <= IMBALANCED_HIGH


def sat(msat: int) -> float:
    """Millisatoshi as satoshi (exact to the millisatoshi)."""
    return msat / 1000


@dataclass(slots=True)
class Figures:
    """Count and sums of one kind and status."""

    count: int = 0
    amount_msat: int = 0
    fee_msat: int = 0

    def negated(self) -> Figures:
        return Figures(-self.count, -self.amount_msat, -self.fee_msat)

    def add(self, other: Figures) -> None:
        self.count += other.count
        self.amount_msat += other.amount_msat
        self.fee_msat += other.fee_msat


@dataclass(slots=True)
class Activity:
    """What happened in a window, by (kind, status), rebalance payments set apart."""

    by: dict[tuple[str, str], Figures] = field(default_factory=dict)
    invoices_created: int = 0

    def get(self, kind: str, status: str) -> Figures:
        return self.by.get((kind, status), Figures())

    # ------------------------------------------------------------ derived views

    def payments(self) -> dict[str, Any]:
        ok, failed = self.get("payment", "succeeded"), self.get("payment", "failed")
        final = ok.count + failed.count
        return {
            "succeeded": ok.count,
            "failed": failed.count,
            "success_rate": round(ok.count / final, 6) if final else None,
            "sent_msat": ok.amount_msat,
            "sent_sat": sat(ok.amount_msat),
            "fees_msat": ok.fee_msat,
            "fees_sat": sat(ok.fee_msat),
            "fee_ppm": round(ok.fee_msat * 1_000_000 / ok.amount_msat, 1) if ok.amount_msat else None,
            "average_sat": sat(ok.amount_msat // ok.count) if ok.count else None,
        }

    def invoices(self) -> dict[str, Any]:
        settled = self.get("invoice", "settled")
        return {
            "created": self.invoices_created,
            "settled": settled.count,
            "received_msat": settled.amount_msat,
            "received_sat": sat(settled.amount_msat),
            "canceled": self.get("invoice", "canceled").count,
            "expired": self.get("invoice", "expired").count,
            "average_sat": sat(settled.amount_msat // settled.count) if settled.count else None,
        }

    def forwards(self) -> dict[str, Any]:
        ok, failed = self.get("forward", "settled"), self.get("forward", "failed")
        final = ok.count + failed.count
        return {
            "settled": ok.count,
            "failed": failed.count,
            "success_rate": round(ok.count / final, 6) if final else None,
            "volume_msat": ok.amount_msat,
            "volume_sat": sat(ok.amount_msat),
            "fees_earned_msat": ok.fee_msat,
            "fees_earned_sat": sat(ok.fee_msat),
        }

    def rebalances(self) -> dict[str, Any]:
        ok = self.get("rebalance", "succeeded")
        return {
            "succeeded": ok.count,
            "failed": self.get("rebalance", "failed").count,
            "dry_run": self.get("rebalance", "dry_run").count,
            "moved_msat": ok.amount_msat,
            "moved_sat": sat(ok.amount_msat),
            "fees_msat": ok.fee_msat,
            "fees_sat": sat(ok.fee_msat),
        }

    def fees(self) -> dict[str, Any]:
        earned = self.get("forward", "settled").fee_msat
        paid = self.get("payment", "succeeded").fee_msat
        rebalance = self.get("rebalance", "succeeded").fee_msat
        net = earned - paid - rebalance
        return {
            "earned_msat": earned,
            "earned_sat": sat(earned),
            "paid_msat": paid,
            "paid_sat": sat(paid),
            "rebalance_msat": rebalance,
            "rebalance_sat": sat(rebalance),
            "net_msat": net,
            "net_sat": sat(net),
        }


def activity(conn: sqlite3.Connection, start: float, end: float) -> Activity:
    """Counts and sums of every kind and status whose latest state falls in the window,
    and the invoices created in it."""
    result = Activity(by=grouped(conn, start, end))
    for (kind, status), figures in _rebalance_own(conn, start, end).items():
        if (kind, status) in result.by:
            result.by[(kind, status)].add(figures.negated())
    row = conn.execute(
        "SELECT COUNT(*) FROM metrics_tx WHERE kind = 'invoice' AND created >= ? AND created < ?",
        (start, end),
    ).fetchone()
    own = conn.execute(
        f"SELECT COUNT(*) FROM {_REBALANCE_OWN} "
        "WHERE t.kind = 'invoice' AND t.created >= ? AND t.created < ?",
        (start, end),
    ).fetchone()
    result.invoices_created = row[0] - own[0]
    return result


def grouped(
    conn: sqlite3.Connection, start: float, end: float, step: float | None = None
) -> dict[Any, Figures]:
    """Sums of ``metrics_tx`` in the window by (kind, status), or by (bucket, kind,
    status) with ``step`` (buckets of ``step`` seconds from ``start``).

    Whole hours come from ``metrics_tx_hourly``; only the rows of a partial first and
    last hour are read from ``metrics_tx``, and not even those when the part of the hour
    outside the window holds no row (a window ending now reads no rows at all). Hours
    are used only where they fall inside one bucket (``start`` on an hour and ``step`` a
    multiple of an hour, as for reports).
    """
    out: dict[Any, Figures] = defaultdict(Figures)
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError("grouped() needs a finite window")
    first, last = math.ceil(start / HOUR), math.floor(end / HOUR)
    if first * HOUR != start and _empty(conn, (first - 1) * HOUR, start):
        first -= 1
    if last * HOUR != end and _empty(conn, end, (last + 1) * HOUR):
        last += 1
    aligned = step is None or (start % HOUR == 0 and step % HOUR == 0)
    raw = [(start, end)]
    if aligned and first < last:
        raw = [(start, first * HOUR), (last * HOUR, end)]
        select, group = ("CAST((hour * 3600 - ?) / ? AS INTEGER) AS b, ", "b, ") if step else ("", "")
        params: tuple[Any, ...] = (start, step, first, last) if step else (first, last)
        for row in conn.execute(
            f"SELECT {select}kind, status, SUM(count), SUM(amount_msat), SUM(fee_msat) "
            f"FROM metrics_tx_hourly WHERE hour >= ? AND hour < ? GROUP BY {group}kind, status",
            params,
        ):
            *key, count, amount, fee = tuple(row)
            if count:
                out[tuple(key)].add(Figures(count, amount, fee))
    select, group = ("CAST((time - ?) / ? AS INTEGER) AS b, ", "b, ") if step else ("", "")
    for low, high in raw:
        if low >= high:
            continue
        params = (start, step, low, high) if step else (low, high)
        for row in conn.execute(
            f"SELECT {select}kind, status, COUNT(*), SUM(amount_msat), SUM(fee_msat) FROM metrics_tx "
            f"WHERE time >= ? AND time < ? GROUP BY {group}kind, status",
            params,
        ):
            *key, count, amount, fee = tuple(row)
            out[tuple(key)].add(Figures(count, amount, fee))
    return dict(out)


def _empty(conn: sqlite3.Connection, low: float, high: float) -> bool:
    """No row has its time in [low, high) (one index seek)."""
    sql = "SELECT 1 FROM metrics_tx WHERE time >= ? AND time < ? LIMIT 1"
    return conn.execute(sql, (low, high)).fetchone() is None


def _rebalance_own(
    conn: sqlite3.Connection, start: float, end: float, step: float | None = None
) -> dict[Any, Figures]:
    """The circular payments of rebalances and the invoices they paid, by (kind, status),
    or by (bucket, kind, status) with ``step``. Looked up through the rebalances' own
    payment hashes (few rows), so the window's other rows are never read."""
    select, group = ("CAST((t.time - ?) / ? AS INTEGER) AS b, ", "b, ") if step is not None else ("", "")
    params: tuple[Any, ...] = (start, step, start, end) if step is not None else (start, end)
    out: dict[Any, Figures] = {}
    for row in conn.execute(
        f"SELECT {select}t.kind, t.status, COUNT(*), SUM(t.amount_msat), SUM(t.fee_msat) "
        f"FROM {_REBALANCE_OWN} "
        "WHERE t.kind IN ('payment', 'invoice') AND t.time >= ? AND t.time < ? "
        f"GROUP BY {group}t.kind, t.status",
        params,
    ):
        *key, count, amount, fee = tuple(row)
        out[tuple(key)] = Figures(count, amount, fee)
    return out


def breakdown(conn: sqlite3.Connection, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """Per-bucket (``step`` seconds, aligned to ``start``) received, sent, forwarded and
    fee figures, for a period report; buckets with no activity are included."""
    buckets: dict[int, dict[tuple[str, str], Figures]] = defaultdict(dict)
    for (b, kind, status), figures in grouped(conn, start, end, step).items():
        buckets[b][(kind, status)] = figures
    for (b, kind, status), figures in _rebalance_own(conn, start, end, step).items():
        if (kind, status) in buckets[b]:
            buckets[b][(kind, status)].add(figures.negated())
    out = []
    count = max(1, int((end - start + step - 1) // step))
    for b in range(count):
        figures = buckets.get(b, {})
        empty = Figures()
        received = figures.get(("invoice", "settled"), empty)
        sent = figures.get(("payment", "succeeded"), empty)
        forwarded = figures.get(("forward", "settled"), empty)
        rebalanced = figures.get(("rebalance", "succeeded"), empty)
        out.append(
            {
                "start": start + b * step,
                "invoices_settled": received.count,
                "received_msat": received.amount_msat,
                "payments_succeeded": sent.count,
                "payments_failed": figures.get(("payment", "failed"), empty).count,
                "sent_msat": sent.amount_msat,
                "forwards_settled": forwarded.count,
                "forwarded_msat": forwarded.amount_msat,
                "fees_earned_msat": forwarded.fee_msat,
                "fees_paid_msat": sent.fee_msat,
                "rebalance_fees_msat": rebalanced.fee_msat,
                "net_fees_msat": forwarded.fee_msat - sent.fee_msat - rebalanced.fee_msat,
            }
        )
    return out


def known_channel(conn: sqlite3.Connection, chan_id: int) -> dict[str, Any] | None:
    """The channel's identity as the plugin recorded it, or None if it never saw it."""
    row = conn.execute(
        "SELECT chan_id, channel_point, peer_pubkey, peer_alias, capacity_sat, opened, closed "
        "FROM metrics_channels WHERE chan_id = ?",
        (chan_id,),
    ).fetchone()
    if row is not None:
        return dict(row)
    row = conn.execute(
        "SELECT 1 FROM metrics_tx WHERE kind = 'forward' AND (chan_in = ? OR chan_out = ?) LIMIT 1",
        (chan_id, chan_id),
    ).fetchone()
    if row is None:
        return None
    return {
        "chan_id": chan_id,
        "channel_point": "",
        "peer_pubkey": "",
        "peer_alias": "",
        "capacity_sat": 0,
        "opened": None,
        "closed": None,
    }


def channel_performance(
    conn: sqlite3.Connection, start: float, end: float, chan_ids: Iterable[int] | None = None
) -> dict[int, dict[str, Any]]:
    """Per channel: forwards out and in, volume, fees earned (credited to the outgoing
    channel), failed forwards, rebalances, and uptime and balance ratio from the samples."""
    stats: dict[int, dict[str, Any]] = defaultdict(empty_performance)
    for row in conn.execute(
        "SELECT chan_out, status, COUNT(*), SUM(amount_msat), SUM(fee_msat) FROM metrics_tx "
        "WHERE kind = 'forward' AND time >= ? AND time < ? GROUP BY chan_out, status",
        (start, end),
    ):
        s = stats[row[0]]
        if row[1] == "settled":
            s["forwards_out"] = row[2]
            s["volume_out_msat"] = row[3]
            s["fees_earned_msat"] = row[4]
        else:
            s["forwards_failed_out"] = row[2]
    for row in conn.execute(
        "SELECT chan_in, COUNT(*), SUM(amount_msat + fee_msat) FROM metrics_tx "
        "WHERE kind = 'forward' AND status = 'settled' AND time >= ? AND time < ? GROUP BY chan_in",
        (start, end),
    ):
        s = stats[row[0]]
        s["forwards_in"] = row[1]
        s["volume_in_msat"] = row[2]
    for row in conn.execute(
        "SELECT chan_out, chan_in, amount_msat, fee_msat FROM metrics_tx "
        "WHERE kind = 'rebalance' AND status = 'succeeded' AND time >= ? AND time < ?",
        (start, end),
    ):
        out, inc = stats[row[0]], stats[row[1]]
        out["rebalanced_out_msat"] += row[2]
        out["rebalance_fees_msat"] += row[3]
        inc["rebalanced_in_msat"] += row[2]
    for row in conn.execute(
        "SELECT chan_id, COUNT(*), SUM(active), "
        "AVG(CASE WHEN local_sat + remote_sat > 0 THEN local_sat * 1.0 / (local_sat + remote_sat) END), "
        "MIN(CASE WHEN local_sat + remote_sat > 0 THEN local_sat * 1.0 / (local_sat + remote_sat) END), "
        "MAX(CASE WHEN local_sat + remote_sat > 0 THEN local_sat * 1.0 / (local_sat + remote_sat) END) "
        "FROM metrics_channel_samples WHERE time >= ? AND time < ? GROUP BY chan_id",
        (start, end),
    ):
        s = stats[row[0]]
        s["samples"] = row[1]
        s["uptime"] = round(row[2] / row[1], 6) if row[1] else None
        s["balance_ratio_avg"] = _round(row[3])
        s["balance_ratio_min"] = _round(row[4])
        s["balance_ratio_max"] = _round(row[5])
    if chan_ids is not None:
        return {c: stats[c] if c in stats else empty_performance() for c in chan_ids}
    return dict(stats)


def _round(value: float | None) -> float | None:
    return round(value, 6) if value is not None else None


def empty_performance() -> dict[str, Any]:
    return {
        "forwards_out": 0,
        "forwards_in": 0,
        "forwards_failed_out": 0,
        "volume_out_msat": 0,
        "volume_in_msat": 0,
        "fees_earned_msat": 0,
        "rebalanced_out_msat": 0,
        "rebalanced_in_msat": 0,
        "rebalance_fees_msat": 0,
        "samples": 0,
        "uptime": None,
        "balance_ratio_avg": None,
        "balance_ratio_min": None,
        "balance_ratio_max": None,
    }


def channel_series(
    conn: sqlite3.Connection, chan_id: int, start: float, end: float, points: int
) -> list[dict[str, Any]]:
    """The channel's balance samples in the window, averaged into at most ``points``
    equal buckets (a year of samples comes back as a chart-sized series)."""
    step = max((end - start) / points, 1e-9)
    rows = conn.execute(
        "SELECT CAST((time - ?) / ? AS INTEGER) AS b, MIN(time), AVG(local_sat), AVG(remote_sat), "
        "AVG(capacity_sat), AVG(active), COUNT(*) FROM metrics_channel_samples "
        "WHERE chan_id = ? AND time >= ? AND time < ? GROUP BY b ORDER BY b",
        (start, step, chan_id, start, end),
    ).fetchall()
    series = []
    for row in rows:
        local, remote = row[2], row[3]
        series.append(
            {
                "time": row[1],
                "local_sat": round(local),
                "remote_sat": round(remote),
                "capacity_sat": round(row[4]),
                "balance_ratio": round(local / (local + remote), 6) if local + remote else None,
                "uptime": round(row[5], 6),
                "samples": row[6],
            }
        )
    return series


HISTORY_COLUMNS = (
    "id",
    "kind",
    "key",
    "status",
    "time",
    "created",
    "amount_msat",
    "fee_msat",
    "chan_in",
    "chan_out",
    "payment_hash",
    "description",
)


def history_page(
    conn: sqlite3.Connection,
    *,
    start: float,
    end: float,
    kinds: Sequence[str],
    statuses: Sequence[str],
    chan_id: int | None,
    after: tuple[float, str, int] | None,
    limit: int,
    ascending: bool = False,
) -> list[dict[str, Any]]:
    """One page of the transaction history, newest first (or oldest first), keyset
    paginated on (time, kind, id): ``after`` is the last row of the previous page."""
    op, order = (">", "ASC") if ascending else ("<", "DESC")
    where: list[str] = []
    params: list[Any] = []
    if after is not None:
        # First, so sqlite seeks the index to the cursor instead of scanning from the
        # window's start past every row with the cursor's timestamp.
        where.append(f"(time, kind, id) {op} (?, ?, ?)")
        params.extend(after)
    where += ["time >= ?", "time < ?"]
    params += [start, end]
    if kinds:
        where.append(f"kind IN ({','.join('?' * len(kinds))})")
        params.extend(kinds)
    if statuses:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        params.extend(statuses)
    if chan_id is not None:
        where.append("(chan_in = ? OR chan_out = ?)")
        params.extend((chan_id, chan_id))
    sql = (
        f"SELECT {', '.join(HISTORY_COLUMNS)} FROM metrics_tx WHERE {' AND '.join(where)} "
        f"ORDER BY time {order}, kind {order}, id {order} LIMIT ?"
    )
    params.append(limit)
    return [dict(row) for row in conn.execute(sql, params)]
