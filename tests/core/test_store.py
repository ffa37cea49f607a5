"""The store's writer connection under a burst: what it keeps in memory and what it writes."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest

from lightningd_py.store import WRITER_CACHE_KIB, Store, StoreHandle

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd"),
]


def temporary_files() -> list[str]:
    """sqlite's temporary files this process has open (unlinked, so only /proc shows them)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "etilqs_" in target:
            names.append(target)
    return names


async def test_a_units_savepoint_keeps_the_pages_it_changes_in_memory(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    store.open()
    handle = StoreHandle(store, "owner")
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        await handle.execute("CREATE TABLE burst (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        await handle.executemany("INSERT INTO burst VALUES (?, ?)", [(i, "x" * 200) for i in range(20_000)])

        def rewrite(conn: sqlite3.Connection) -> list[str]:
            # Every page of the table existed before this unit's savepoint, so sqlite
            # keeps each one's old content (about 5 MB here) to roll the unit back.
            conn.execute("UPDATE burst SET v = 'y' || v")
            return temporary_files()

        assert await handle.write(rewrite) == []
        assert tuple(await handle.fetchone("SELECT COUNT(*) FROM burst WHERE v LIKE 'y%'")) == (20_000,)
        cache = await handle.write(lambda conn: conn.execute("PRAGMA cache_size").fetchone()[0])
        assert cache == -WRITER_CACHE_KIB
        tg.cancel_scope.cancel()
    await store.close()
