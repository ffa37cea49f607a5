"""Fixtures for the metrics plugin's tests: the plugin's tables on a real sqlite
database behind the daemon's own batching store, and promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import lightningd_py.plugins.metrics as metrics_plugin
import pytest

from lightningd_py.journal import MIGRATIONS as JOURNAL_MIGRATIONS
from lightningd_py.store import Store, StoreHandle


@pytest.fixture
def metrics_store(tmp_path: Path) -> Callable[[], AbstractAsyncContextManager[StoreHandle]]:
    """``async with metrics_store() as handle:`` a migrated database with its writer
    running; ``handle`` is the plugin's ``StoreHandle``."""

    @asynccontextmanager
    async def open_store() -> AsyncIterator[StoreHandle]:
        store = Store(tmp_path / "ldp.sqlite3")
        store.open()
        # As in the daemon: the journal first, then the plugin's own tables.
        store.migrate("journal", JOURNAL_MIGRATIONS)
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


@pytest.fixture
def promtool() -> Callable[[bytes], None]:
    """``promtool(text)``: assert that ``promtool check metrics`` accepts the exposition.
    Skips when promtool is missing, except in CI (CI=true), where that is a failure."""
    if shutil.which("promtool") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing (Debian package prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")

    def check(text: bytes) -> None:
        result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
        assert result.returncode == 0, (result.stdout + result.stderr).decode()

    return check
