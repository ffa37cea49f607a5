"""Fixtures for the metrics plugin's unit tests: the plugin's tables on a real sqlite
database behind the daemon's own batching store, and scripted events with known ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import lightningd_py.plugins.metrics as metrics_plugin
import pytest

from lightningd_py.store import Store, StoreHandle


@pytest.fixture
def metrics_store(tmp_path: Path) -> Callable[[], AbstractAsyncContextManager[StoreHandle]]:
    """``async with metrics_store() as handle:`` a migrated database with its writer
    running; ``handle`` is the plugin's ``StoreHandle``."""

    @asynccontextmanager
    async def open_store() -> AsyncIterator[StoreHandle]:
        store = Store(tmp_path / "ldp.sqlite3")
        store.open()
        store.migrate("metrics", metrics_plugin.ldp_migrations())
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            try:
                yield store.handle("metrics")
                await store.flush()
            finally:
                tg.cancel_scope.cancel()
        await store.close()

    return open_store
