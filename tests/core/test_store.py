"""The store's connections: the writer's page cache holds a burst's pages."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from lightningd_py.store import WRITER_CACHE_KIB, Store, StoreHandle

pytestmark = pytest.mark.anyio


async def test_the_writer_caches_more_pages_than_the_readers(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    store.open()
    handle = StoreHandle(store, "owner")
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        writer = await handle.write(lambda conn: conn.execute("PRAGMA cache_size").fetchone()[0])
        reader = await handle.read(lambda conn: conn.execute("PRAGMA cache_size").fetchone()[0])
        assert writer == -WRITER_CACHE_KIB and reader == -2000
        # Giving the cache back after a burst keeps the setting for the next one.
        await store.release_memory()
        again = await handle.write(lambda conn: conn.execute("PRAGMA cache_size").fetchone()[0])
        assert again == -WRITER_CACHE_KIB
        tg.cancel_scope.cancel()
    await store.close()
