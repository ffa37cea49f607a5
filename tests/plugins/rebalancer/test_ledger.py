"""The fee budget on a real database: reservations never exceed it, even when many
attempts reserve at once, and survive a restart."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from lightningd_py.plugins.rebalancer.ledger import DAY, MIGRATIONS, Ledger

from lightningd_py.store import Store

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[Ledger]:
    store = Store(path)
    store.open()
    store.migrate("rebalancer", MIGRATIONS)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            yield Ledger(store.handle("rebalancer"))
            await store.flush()
            tg.cancel_scope.cancel()
    finally:
        await store.close()


async def test_concurrent_reservations_never_exceed_the_budget(tmp_path: Path) -> None:
    async with opened(tmp_path / "db.sqlite") as ledger:
        held: list[tuple[int, int] | None] = []

        async def reserve(i: int) -> None:
            held.append(
                await ledger.reserve(
                    rebalance_id=f"r{i}", attempt=1, amount_msat=1_000_000, max_fee_msat=300, budget_msat=1000
                )
            )

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(reserve, i)
        granted = [h for h in held if h is not None]
        # Three full reservations and the 100 msat left; the rest are refused.
        assert sorted(h[1] for h in granted) == [100, 300, 300, 300]
        budget = await ledger.budget(1000)
        assert budget.reserved_msat == 1000 and budget.remaining_msat == 0

        # Settling to the actual fee frees the difference; releasing frees it all.
        await ledger.finish_attempt(granted[0][0], status="succeeded", fee_msat=120)
        await ledger.finish_attempt(granted[1][0], status="failed")
        budget = await ledger.budget(1000)
        assert budget.spent_msat == 120
        assert budget.used_msat == 120 + sum(h[1] for h in granted[2:])


async def test_unknown_outcomes_stay_reserved_until_their_payment_event(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with opened(path) as ledger:
        sent = await ledger.reserve(
            rebalance_id="a", attempt=1, amount_msat=1, max_fee_msat=500, budget_msat=10_000
        )
        never = await ledger.reserve(
            rebalance_id="b", attempt=1, amount_msat=1, max_fee_msat=700, budget_msat=10_000
        )
        assert sent is not None and never is not None
        await ledger.set_attempt_hash(sent[0], "ab" * 32)
        await ledger.start_run(
            rebalance_id="a",
            mode="manual",
            outgoing_chan_id=1,
            incoming_chan_id=2,
            last_hop_pubkey="02" + "00" * 32,
            requested_msat=1,
            dry_run=False,
        )
    # A new process: the sent attempt may have been paid, the unsent one cannot be.
    async with opened(path) as ledger:
        assert await ledger.abandon_running() == 1
        budget = await ledger.budget(10_000)
        assert budget.reserved_msat == 500 and budget.spent_msat == 0
        assert await ledger.settle_by_hash("ab" * 32, True, 321) == 1
        budget = await ledger.budget(10_000)
        assert budget.reserved_msat == 0 and budget.spent_msat == 321
        runs = await ledger.history(10)
        assert runs[0]["status"] == "failed" and runs[0]["failure_reason"] == "interrupted"


async def test_budget_window_is_rolling(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with opened(path) as ledger:
        got = await ledger.reserve(
            rebalance_id="old", attempt=1, amount_msat=1, max_fee_msat=900, budget_msat=1000
        )
        assert got is not None
        await ledger.finish_attempt(got[0], status="succeeded", fee_msat=900)
        assert (await ledger.budget(1000)).remaining_msat == 100
        await ledger.store.write(
            lambda c: c.execute("UPDATE rebalancer_attempts SET created = ?", (time.time() - DAY - 1,))
        )
        assert (await ledger.budget(1000)).remaining_msat == 1000


async def test_forwards_are_counted_once(tmp_path: Path) -> None:
    async with opened(tmp_path / "db.sqlite") as ledger:
        now = time.time()
        for event_id in (5, 6, 6, 5):  # redelivered after a crash
            await ledger.add_forward(event_id, 1, 2, 1_001_000, 1_000_000, now)
        volumes = await ledger.volumes(now - DAY)
        assert volumes == {1: 2_002_000, 2: 2_000_000}
