"""The rebalancer's tables and the fee budget.

Every rebalance (a run) and each of its attempts is a row. An attempt's maximum fee is
reserved against the rolling 24-hour budget in the same write that inserts the attempt
row, inside the store's single writer, so no two attempts (in this process or after a
restart) can together reserve more than the budget. When the payment ends the
reservation is settled to the fee actually paid (or released: 0). An attempt whose
outcome is unknown (the daemon stopped mid-payment) stays reserved at its maximum until
the payment's own event settles it, or until it leaves the 24-hour window.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightningd_py.store import Migration, StoreHandle

__all__ = ["DAY", "MIGRATIONS", "BudgetState", "Ledger"]

DAY = 86400.0

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        sql="""
CREATE TABLE rebalancer_runs (
    rebalance_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    finished REAL,
    mode TEXT NOT NULL,
    outgoing_chan_id INTEGER NOT NULL,
    incoming_chan_id INTEGER NOT NULL,
    last_hop_pubkey TEXT NOT NULL,
    requested_msat INTEGER NOT NULL,
    moved_msat INTEGER NOT NULL DEFAULT 0,
    fee_msat INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    failure_reason TEXT NOT NULL DEFAULT '',
    dry_run INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX rebalancer_runs_created ON rebalancer_runs (created);
CREATE TABLE rebalancer_attempts (
    id INTEGER PRIMARY KEY,
    rebalance_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    amount_msat INTEGER NOT NULL,
    max_fee_msat INTEGER NOT NULL,
    fee_msat INTEGER NOT NULL DEFAULT 0,
    payment_hash TEXT NOT NULL DEFAULT '',
    route TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    failure_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX rebalancer_attempts_created ON rebalancer_attempts (created);
CREATE INDEX rebalancer_attempts_hash ON rebalancer_attempts (payment_hash);
CREATE INDEX rebalancer_attempts_run ON rebalancer_attempts (rebalance_id);
CREATE TABLE rebalancer_cooldowns (
    chan_id INTEGER PRIMARY KEY,
    until REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE rebalancer_forwards (
    chan_id INTEGER NOT NULL,
    day INTEGER NOT NULL,
    in_msat INTEGER NOT NULL DEFAULT 0,
    out_msat INTEGER NOT NULL DEFAULT 0,
    fee_msat INTEGER NOT NULL DEFAULT 0,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chan_id, day)
);
CREATE TABLE rebalancer_marks (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
CREATE TABLE rebalancer_inactive (
    channel_point TEXT PRIMARY KEY,
    since REAL NOT NULL
);
CREATE TABLE rebalancer_fee_changes (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    chan_id INTEGER NOT NULL,
    channel_point TEXT NOT NULL,
    ratio REAL NOT NULL,
    old_ppm INTEGER NOT NULL,
    new_ppm INTEGER NOT NULL,
    base_fee_msat INTEGER NOT NULL,
    time_lock_delta INTEGER NOT NULL,
    applied INTEGER NOT NULL,
    dry_run INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE rebalancer_lifecycle (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    amount_sat INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE rebalancer_backups (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    event_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
""",
    ),
)

# Reserved attempts count at their maximum, finished ones at what they paid.
_USED_SQL = (
    "SELECT COALESCE(SUM(CASE WHEN status IN ('reserved', 'unknown') THEN max_fee_msat "
    "ELSE fee_msat END), 0) FROM rebalancer_attempts WHERE created >= ?"
)


class BudgetState:
    """The fee budget at one moment (msat)."""

    __slots__ = ("limit_msat", "reserved_msat", "spent_msat")

    def __init__(self, limit_msat: int, spent_msat: int, reserved_msat: int) -> None:
        self.limit_msat = limit_msat
        self.spent_msat = spent_msat
        self.reserved_msat = reserved_msat

    @property
    def used_msat(self) -> int:
        return self.spent_msat + self.reserved_msat

    @property
    def remaining_msat(self) -> int:
        return max(0, self.limit_msat - self.used_msat)

    def as_dict(self) -> dict[str, int]:
        return {
            "limit_msat": self.limit_msat,
            "spent_msat": self.spent_msat,
            "reserved_msat": self.reserved_msat,
            "used_msat": self.used_msat,
            "remaining_msat": self.remaining_msat,
        }


class Ledger:
    """The plugin's reads and writes, on its ``daemon.store`` handle."""

    def __init__(self, store: StoreHandle) -> None:
        self.store = store

    # ------------------------------------------------------------ budget

    async def reserve(
        self,
        *,
        rebalance_id: str,
        attempt: int,
        amount_msat: int,
        max_fee_msat: int,
        budget_msat: int,
        partial: bool = True,
    ) -> tuple[int, int] | None:
        """Insert an attempt holding ``max_fee_msat`` of the budget or, with ``partial``,
        what is left when that is less (never 0 unless ``max_fee_msat`` is 0).

        :return: ``(attempt row id, reserved msat)``, or None when the budget has no room.
        """
        now = time.time()

        def fn(conn: sqlite3.Connection) -> tuple[int, int] | None:
            used = conn.execute(_USED_SQL, (now - DAY,)).fetchone()[0]
            room = budget_msat - used
            if room < max_fee_msat and not partial:
                return None
            if room < 0 or (room == 0 and max_fee_msat > 0):
                return None
            hold = min(max_fee_msat, room)
            cur = conn.execute(
                "INSERT INTO rebalancer_attempts (rebalance_id, attempt, created, amount_msat, "
                "max_fee_msat, status) VALUES (?, ?, ?, ?, ?, 'reserved')",
                (rebalance_id, attempt, now, amount_msat, hold),
            )
            return int(cur.lastrowid or 0), hold

        return await self.store.write(fn)

    async def finish_attempt(
        self,
        attempt_id: int,
        *,
        status: str,
        fee_msat: int = 0,
        payment_hash: str = "",
        route: Sequence[Mapping[str, Any]] = (),
        failure_reason: str = "",
    ) -> None:
        """Settle (``succeeded``), release (``failed``) or keep holding (``unknown``)."""
        now = time.time()
        route_json = json.dumps(list(route))

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE rebalancer_attempts SET status = ?, fee_msat = ?, payment_hash = "
                "CASE WHEN ? != '' THEN ? ELSE payment_hash END, route = ?, failure_reason = ?, "
                "finished = ? WHERE id = ?",
                (status, fee_msat, payment_hash, payment_hash, route_json, failure_reason, now, attempt_id),
            )

        await self.store.write(fn)

    async def set_attempt_hash(self, attempt_id: int, payment_hash: str) -> None:
        await self.store.write(
            lambda c: c.execute(
                "UPDATE rebalancer_attempts SET payment_hash = ? WHERE id = ?", (payment_hash, attempt_id)
            )
        )

    async def settle_by_hash(self, payment_hash: str, succeeded: bool, fee_msat: int) -> int:
        """A payment event for an attempt whose outcome was unknown: settle or release it.
        Returns how many attempts changed."""

        def fn(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE rebalancer_attempts SET status = ?, fee_msat = ?, finished = ? "
                "WHERE payment_hash = ? AND status IN ('reserved', 'unknown')",
                (
                    "succeeded" if succeeded else "failed",
                    fee_msat if succeeded else 0,
                    time.time(),
                    payment_hash,
                ),
            )
            return cur.rowcount

        return await self.store.write(fn)

    async def budget(self, limit_msat: int) -> BudgetState:
        since = time.time() - DAY
        row = await self.store.fetchone(
            "SELECT COALESCE(SUM(CASE WHEN status IN ('reserved', 'unknown') THEN max_fee_msat "
            "ELSE 0 END), 0), COALESCE(SUM(CASE WHEN status IN ('reserved', 'unknown') THEN 0 "
            "ELSE fee_msat END), 0) FROM rebalancer_attempts WHERE created >= ?",
            (since,),
        )
        assert row is not None
        return BudgetState(limit_msat, spent_msat=int(row[1]), reserved_msat=int(row[0]))

    # ------------------------------------------------------------ runs

    async def start_run(
        self,
        *,
        rebalance_id: str,
        mode: str,
        outgoing_chan_id: int,
        incoming_chan_id: int,
        last_hop_pubkey: str,
        requested_msat: int,
        dry_run: bool,
    ) -> None:
        await self.store.execute(
            "INSERT INTO rebalancer_runs (rebalance_id, created, mode, outgoing_chan_id, incoming_chan_id, "
            "last_hop_pubkey, requested_msat, status, dry_run) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
            (
                rebalance_id,
                time.time(),
                mode,
                outgoing_chan_id,
                incoming_chan_id,
                last_hop_pubkey,
                requested_msat,
                int(dry_run),
            ),
        )

    async def finish_run(
        self,
        rebalance_id: str,
        *,
        status: str,
        moved_msat: int,
        fee_msat: int,
        attempts: int,
        failure_reason: str,
    ) -> None:
        await self.store.execute(
            "UPDATE rebalancer_runs SET finished = ?, status = ?, moved_msat = ?, fee_msat = ?, "
            "attempts = ?, failure_reason = ? WHERE rebalance_id = ?",
            (time.time(), status, moved_msat, fee_msat, attempts, failure_reason, rebalance_id),
        )
        await self.store.flush()

    async def abandon_running(self) -> int:
        """Runs left 'running' by a previous process end as failed (their attempts keep
        their reservations until the payments' events settle them)."""

        def fn(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE rebalancer_runs SET status = 'failed', failure_reason = 'interrupted', finished = ? "
                "WHERE status = 'running'",
                (time.time(),),
            )
            conn.execute(
                "UPDATE rebalancer_attempts SET status = 'unknown' "
                "WHERE status = 'reserved' AND payment_hash != ''"
            )
            # Never sent (no invoice yet): nothing can be paid, release.
            conn.execute(
                "UPDATE rebalancer_attempts SET status = 'failed', fee_msat = 0, "
                "failure_reason = 'interrupted' WHERE status = 'reserved' AND payment_hash = ''"
            )
            return cur.rowcount

        return await self.store.write(fn)

    async def history(self, limit: int, before: float | None = None) -> list[dict[str, Any]]:
        rows = await self.store.fetchall(
            "SELECT * FROM rebalancer_runs WHERE created < ? ORDER BY created DESC LIMIT ?",
            (before if before is not None else time.time() + DAY, limit),
        )
        runs = [dict(r) for r in rows]
        if not runs:
            return runs
        ids = [r["rebalance_id"] for r in runs]
        attempts = await self.store.fetchall(
            "SELECT * FROM rebalancer_attempts "
            "WHERE rebalance_id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps(ids),),
        )
        by_run: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            item = dict(a)
            item["route"] = json.loads(item["route"] or "[]")
            by_run.setdefault(item["rebalance_id"], []).append(item)
        for run in runs:
            run["dry_run"] = bool(run["dry_run"])
            run["attempt_log"] = by_run.get(run["rebalance_id"], [])
        return runs

    async def totals(self) -> dict[str, int]:
        """Counts by result and fees paid, for metrics that survive restarts."""
        rows = await self.store.fetchall(
            "SELECT status, COUNT(*), COALESCE(SUM(fee_msat), 0) FROM rebalancer_runs GROUP BY status"
        )
        out = {"fees_msat": 0}
        for status, count, fees in rows:
            out[str(status)] = int(count)
            out["fees_msat"] += int(fees)
        return out

    # ------------------------------------------------------------ cooldowns

    async def cool_down(self, chan_ids: Iterable[int], until: float, reason: str) -> None:
        await self.store.executemany(
            "INSERT INTO rebalancer_cooldowns (chan_id, until, reason) VALUES (?, ?, ?) "
            "ON CONFLICT (chan_id) DO UPDATE SET until = excluded.until, reason = excluded.reason",
            [(c, until, reason) for c in chan_ids],
        )
        await self.store.flush()

    async def cooldowns(self, now: float) -> dict[int, float]:
        rows = await self.store.fetchall(
            "SELECT chan_id, until FROM rebalancer_cooldowns WHERE until > ?", (now,)
        )
        return {int(r[0]): float(r[1]) for r in rows}

    # ------------------------------------------------------------ forwards and activity

    async def add_forward(
        self, event_id: int, in_chan: int, out_chan: int, amt_in: int, amt_out: int, ts: float
    ) -> None:
        """Count a settled forward once (events can be delivered again after a crash)."""
        day = int(ts // DAY)

        def fn(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT value FROM rebalancer_marks WHERE name = 'forward_event'").fetchone()
            if row is not None and event_id <= row[0]:
                return
            upsert = (
                "INSERT INTO rebalancer_forwards (chan_id, day, in_msat, out_msat, fee_msat, count) "
                "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (chan_id, day) DO UPDATE SET "
                "in_msat = in_msat + excluded.in_msat, out_msat = out_msat + excluded.out_msat, "
                "fee_msat = fee_msat + excluded.fee_msat, count = count + 1"
            )
            conn.execute(upsert, (in_chan, day, amt_in, 0, 0))
            conn.execute(upsert, (out_chan, day, 0, amt_out, amt_in - amt_out))
            conn.execute(
                "INSERT INTO rebalancer_marks (name, value) VALUES ('forward_event', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (event_id,),
            )

        await self.store.write(fn)

    async def volumes(self, since: float) -> dict[int, int]:
        rows = await self.store.fetchall(
            "SELECT chan_id, SUM(in_msat + out_msat) FROM rebalancer_forwards "
            "WHERE day >= ? GROUP BY chan_id",
            (int(since // DAY),),
        )
        return {int(r[0]): int(r[1]) for r in rows}

    async def last_forward_days(self) -> dict[int, int]:
        rows = await self.store.fetchall("SELECT chan_id, MAX(day) FROM rebalancer_forwards GROUP BY chan_id")
        return {int(r[0]): int(r[1]) for r in rows}

    async def set_inactive(self, channel_point: str, since: float | None) -> None:
        """Remember when a channel went inactive (None: it is active again or closed)."""
        if since is None:
            await self.store.execute(
                "DELETE FROM rebalancer_inactive WHERE channel_point = ?", (channel_point,)
            )
        else:
            await self.store.execute(
                "INSERT INTO rebalancer_inactive (channel_point, since) VALUES (?, ?) "
                "ON CONFLICT (channel_point) DO NOTHING",
                (channel_point, since),
            )

    async def inactive_since(self) -> dict[str, float]:
        rows = await self.store.fetchall("SELECT channel_point, since FROM rebalancer_inactive")
        return {str(r[0]): float(r[1]) for r in rows}

    # ------------------------------------------------------------ fee policy, lifecycle, backups

    async def record_fee_change(self, row: Mapping[str, Any]) -> None:
        await self.store.execute(
            "INSERT INTO rebalancer_fee_changes (created, chan_id, channel_point, ratio, old_ppm, "
            "new_ppm, base_fee_msat, time_lock_delta, applied, dry_run, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                row["chan_id"],
                row["channel_point"],
                row["ratio"],
                row["old_ppm"],
                row["new_ppm"],
                row["base_fee_msat"],
                row["time_lock_delta"],
                int(row["applied"]),
                int(row["dry_run"]),
                row.get("error", ""),
            ),
        )

    async def fee_changes(self, limit: int) -> list[dict[str, Any]]:
        await self.store.flush()
        rows = await self.store.fetchall(
            "SELECT * FROM rebalancer_fee_changes ORDER BY id DESC LIMIT ?", (limit,)
        )
        out = [dict(r) for r in rows]
        for r in out:
            r["applied"], r["dry_run"] = bool(r["applied"]), bool(r["dry_run"])
        return out

    async def record_lifecycle(
        self, action: str, target: str, amount_sat: int, reason: str, result: str, detail: str = ""
    ) -> None:
        await self.store.execute(
            "INSERT INTO rebalancer_lifecycle (created, action, target, amount_sat, reason, result, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), action, target, amount_sat, reason, result, detail),
        )
        await self.store.flush()

    async def last_backup_event(self) -> int:
        row = await self.store.fetchone("SELECT MAX(event_id) FROM rebalancer_backups")
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def last_backup_time(self) -> float:
        row = await self.store.fetchone("SELECT MAX(created) FROM rebalancer_backups")
        return float(row[0]) if row is not None and row[0] is not None else 0.0

    async def record_backup(self, event_id: int, path: str, size: int, channels: int, sha256: str) -> None:
        await self.store.execute(
            "INSERT INTO rebalancer_backups (created, event_id, path, bytes, channels, sha256) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), event_id, path, size, channels, sha256),
        )
        # Keep the record as small as the files: the last thousand writes are plenty.
        await self.store.execute(
            "DELETE FROM rebalancer_backups WHERE id <= (SELECT MAX(id) FROM rebalancer_backups) - 1000"
        )
