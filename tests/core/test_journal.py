"""The journal, the batching store and the plugin workers, in one process."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from msgspec.structs import replace
from prometheus_client import CollectorRegistry

from lightningd_py import events as events_module
from lightningd_py import journal as journal_module
from lightningd_py import store as store_module
from lightningd_py.config import load_config
from lightningd_py.daemon import NodeStatus
from lightningd_py.events import ChannelActive, InvoiceCreated, InvoiceSettled
from lightningd_py.hookspecs import hookimpl
from lightningd_py.journal import Journal
from lightningd_py.pluginhost import PluginHost, create_plugin_manager
from lightningd_py.store import Migration, Store

pytestmark = pytest.mark.anyio


def make_config(tmp_path: Path, extra: str = ""):
    cert = tmp_path / "tls.cert"
    cert.write_text("x")
    (tmp_path / "admin.macaroon").write_bytes(b"\x02\x01")
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[core]
state_dir = "{tmp_path}/state"
hook_max_attempts = 3
hook_timeout = 2
[lnd]
tls_cert = "{cert}"
macaroon = "{tmp_path}/admin.macaroon"
{extra}
"""
    )
    return path


class Recorder:
    def __init__(self) -> None:
        self.seen: list[int] = []

    @hookimpl
    def ldp_migrations(self):
        return [Migration(1, "CREATE TABLE recorder_seen (event_id INTEGER PRIMARY KEY, hash TEXT)")]

    @hookimpl
    async def ldp_invoice_event(self, daemon, event):
        self.seen.append(event.id)
        await daemon.store.execute(
            "INSERT OR IGNORE INTO recorder_seen(event_id, hash) VALUES (?, ?)",
            (event.id, event.payment_hash),
        )


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def ldp_invoice_event(self, daemon, event):
        self.calls += 1
        raise RuntimeError("boom")


class Slow:
    @hookimpl
    async def ldp_invoice_event(self, daemon, event):
        await anyio.sleep(3600)


def open_journal(path: Path) -> tuple[Store, Journal]:
    """A store on ``path`` with its journal opened (migrated to the current schema)."""
    store = Store(path)
    store.open()
    journal = Journal(store)
    journal.open()
    return store, journal


async def start_host(tmp_path: Path, plugins: dict):
    pm = create_plugin_manager(entry_points=[], extra=plugins)
    config = load_config(make_config(tmp_path), {name: None for name in plugins})
    store, journal = open_journal(config.core.database)
    host = PluginHost(
        config=config,
        pm=pm,
        store=store,
        journal=journal,
        registry=CollectorRegistry(),
        node=NodeStatus(),
        lnd=None,  # type: ignore[arg-type]
    )
    for name, migrations in host.hooks.each_sync("ldp_migrations"):
        store.migrate(name, migrations or [])
    host.prepare_workers()
    return store, journal, host


def invoice(i: int, cls=InvoiceSettled):
    return cls(payment_hash=f"{i:064x}", value_msat=1000 * i, settle_index=i)


async def test_append_dedupes_and_stores_positions(tmp_path: Path) -> None:
    store, journal, _ = await start_host(tmp_path, {})
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        ids = await journal.append([invoice(1), invoice(2), invoice(1)], {"invoices.settle_index": 2})
        assert ids[0] > 0 and ids[1] == ids[0] + 1 and ids[2] == 0
        again = await journal.append(
            [invoice(2), ChannelActive(channel_point="a:0"), ChannelActive(channel_point="a:0")]
        )
        assert again[0] == 0 and again[1] > 0 and again[2] > 0
        assert journal.position("invoices.settle_index") == 2
        events = await journal.read(0)
        assert [e.id for e in events] == [ids[0], ids[1], again[1], again[2]]
        assert events[0] == invoice(1).__class__(
            **{**_fields(invoice(1)), "id": ids[0], "time": events[0].time}
        )
        tg.cancel_scope.cancel()
    await store.close()
    # Positions and events survive a reopen; reads then come from the database.
    store2 = Store(store.path)
    store2.open()
    journal2 = Journal(store2)
    journal2.open()
    assert journal2.position("invoices.settle_index") == 2
    events = await journal2.read(0, limit=2)
    assert [e.payment_hash for e in events] == [f"{1:064x}", f"{2:064x}"]
    assert (await journal2.read(0, types={"channel.active"}))[0].type == "channel.active"
    await store2.close()


@pytest.mark.parametrize("count", [1, 8, 9, 32, 33, 129, 250, 251, 600])
async def test_duplicates_are_found_in_appends_of_any_size(tmp_path: Path, count: int) -> None:
    # Digests are probed in groups padded to a few sizes: every size on either side of a
    # step finds exactly the journaled ones.
    store, journal, _ = await start_host(tmp_path, {})
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        known = [invoice(i) for i in range(1, count + 1, 2)]
        await journal.append(known)
        ids = await journal.append([invoice(i) for i in range(1, count + 1)])
        assert [i == 0 for i in ids] == [i % 2 == 1 for i in range(1, count + 1)]
        assert journal.duplicates == len(known)
        tg.cancel_scope.cancel()
    await store.close()


async def test_keys_journaled_before_their_digests_still_drop_duplicates(tmp_path: Path) -> None:
    """A database whose journal stored the dedupe keys themselves (schema 1) is moved to
    their digests at start; an append of many keys at once is checked in groups."""
    path = tmp_path / "old.sqlite"
    store = Store(path)
    store.open()
    store.migrate("journal", journal_module.MIGRATIONS[:1])
    await store.close()
    old = [invoice(i) for i in range(1, 601)]
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT INTO journal_keys(key) VALUES (?)", [(ev.dedupe_key(),) for ev in old])
    conn.close()

    store, journal = open_journal(path)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        ids = await journal.append([*old, invoice(601), invoice(601, InvoiceCreated)])
        assert [i for i in ids if i] == [1, 2]
        again = await journal.append([invoice(i) for i in range(550, 700)])
        assert len([i for i in again if i]) == 700 - 602
        tg.cancel_scope.cancel()
    await store.close()
    conn = sqlite3.connect(path)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    count = conn.execute("SELECT COUNT(*) FROM journal_key_digests").fetchone()[0]
    conn.close()
    assert "journal_keys" not in tables
    assert count == 600 + 2 + 98


def _fields(ev):
    return {f: getattr(ev, f) for f in ev.__struct_fields__}


async def test_workers_isolate_failing_and_slow_plugins(tmp_path: Path) -> None:
    recorder, failing = Recorder(), Failing()
    store, journal, host = await start_host(
        tmp_path, {"recorder": recorder, "failing": failing, "slow": Slow()}
    )
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        for name in host.runtimes:
            tg.start_soon(host.run_worker, name)
        ids = await journal.append([invoice(i, InvoiceCreated) for i in range(1, 101)])
        with anyio.fail_after(10):
            while host.runtimes["recorder"].cursor < ids[-1]:
                await anyio.sleep(0.01)
        assert recorder.seen == ids
        rows = await host.runtimes["recorder"].daemon.store.fetchall(
            "SELECT event_id FROM recorder_seen ORDER BY 1"
        )
        assert [r[0] for r in rows] == ids
        # The failing plugin retried the first event, then gave it up (hook_max_attempts = 3).
        with anyio.fail_after(10):
            while host.runtimes["failing"].dead_letters < 1:
                await anyio.sleep(0.01)
        assert host.runtimes["failing"].errors >= 3
        status = host.status()
        assert status["plugins"]["slow"]["lag"] == 100
        assert status["plugins"]["recorder"]["lag"] == 0
        tg.cancel_scope.cancel()
    await store.close()


async def test_the_wal_stays_bounded_while_commits_keep_coming(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "WAL_PAGES", 100)
    store, journal, _ = await start_host(tmp_path, {})
    wal = Path(f"{store.path}-wal")

    def wal_size() -> int:
        return wal.stat().st_size

    largest = 0
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        for n in range(200):
            await journal.append([invoice(i, InvoiceCreated) for i in range(n * 50 + 1, n * 50 + 51)])
            largest = max(largest, wal_size())
        tg.cancel_scope.cancel()
    await store.close()
    # Thousands of pages went through the WAL; it never held many more than 100.
    assert largest < 8 * 100 * 4096


class Tally:
    """Keeps its count in ``daemon.state`` between calls."""

    @hookimpl
    def ldp_invoice_event(self, daemon, event):
        daemon.state["seen"] = daemon.state.get("seen", 0) + 1
        daemon.state.setdefault("handle", daemon)


async def test_each_plugin_keeps_its_own_state_between_calls(tmp_path: Path) -> None:
    # One class, two plugins: what each keeps is its own.
    store, journal, host = await start_host(tmp_path, {"first": Tally(), "second": Tally()})
    first, second = host.runtimes["first"].daemon, host.runtimes["second"].daemon
    first.state["mark"] = "first"
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        tg.start_soon(host.run_worker, "first")
        ids = await journal.append([invoice(i, InvoiceCreated) for i in range(1, 6)])
        with anyio.fail_after(10):
            while host.runtimes["first"].cursor < ids[-1]:
                await anyio.sleep(0.01)
        tg.start_soon(host.run_worker, "second")
        more = await journal.append([invoice(i, InvoiceCreated) for i in range(6, 9)])
        with anyio.fail_after(10):
            while min(host.runtimes[n].cursor for n in ("first", "second")) < more[-1]:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    await store.close()
    assert first.state == {"mark": "first", "seen": 8, "handle": first}
    assert second.state == {"seen": 8, "handle": second}


class Bulk:
    """Writes each run with one statement; a run holding the poisoned hash raises."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.runs: list[list[int]] = []

    @hookimpl
    def ldp_migrations(self):
        return [Migration(1, "CREATE TABLE bulk_seen (event_id INTEGER PRIMARY KEY, type TEXT)")]

    @hookimpl
    async def ldp_event_batch(self, daemon, events):
        self.runs.append([e.id for e in events])
        await daemon.store.executemany(
            "INSERT OR IGNORE INTO bulk_seen(event_id, type) VALUES (?, ?)", [(e.id, e.type) for e in events]
        )
        if any(getattr(e, "payment_hash", "") == self.poison for e in events):
            raise RuntimeError("poisoned")

    @hookimpl
    def ldp_invoice_event(self, daemon, event):
        raise AssertionError("a plugin with ldp_event_batch gets no per-type calls")


async def test_runs_go_to_the_batch_hook_and_a_failing_run_is_split(tmp_path: Path) -> None:
    bulk = Bulk(poison=f"{40:064x}")
    store, journal, host = await start_host(tmp_path, {"bulk": bulk})
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        # Journaled before the worker starts, so it reads them as runs.
        ids = await journal.append(
            [invoice(i, InvoiceCreated) for i in range(1, 101)] + [ChannelActive(channel_point="c:1")]
        )
        tg.start_soon(host.run_worker, "bulk")
        with anyio.fail_after(20):
            while host.runtimes["bulk"].cursor < ids[-1]:
                await anyio.sleep(0.01)
        rt = host.runtimes["bulk"]
        # Every type comes through the one hook, in runs.
        assert bulk.runs[0] == ids
        # The run with the poisoned event was handed over one event at a time: the
        # others went through once each, the poisoned one was retried and given up.
        singles = [run[0] for run in bulk.runs[1:]]
        assert all(len(run) == 1 for run in bulk.runs[1:])
        poisoned = ids[39]
        assert singles.count(poisoned) == 3 and sorted(set(singles)) == ids
        assert rt.dead_letters == 1 and rt.errors == 4
        rows = await rt.daemon.store.fetchall("SELECT event_id, type FROM bulk_seen ORDER BY 1")
        assert [r[0] for r in rows] == ids and rows[-1][1] == "channel.active"
        dead = await rt.daemon.store.fetchall("SELECT plugin, event_id FROM journal_dead_letters")
        assert [tuple(r) for r in dead] == [("bulk", poisoned)]
        tg.cancel_scope.cancel()
    await store.close()


async def test_lagging_readers_share_what_was_read_from_the_database(tmp_path: Path) -> None:
    store, journal, _ = await start_host(tmp_path, {})
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        # Beyond the in-memory tail, so the oldest events come from the database.
        ids = await journal.append([invoice(i, InvoiceCreated) for i in range(1, 6001)])
        first = await journal.read(0, limit=500)
        again = await journal.read(0, limit=500)
        assert [e.id for e in again] == ids[:500] and again[0] is first[0]
        # Any start inside a stretch read before gets the rest of that stretch, in order.
        for after in (ids[0], ids[249], ids[498]):
            got = await journal.read(after, limit=500)
            assert [e.id for e in got] == [i for i in ids[:500] if i > after]
        # Past it, the database again, then the tail.
        assert [e.id for e in await journal.read(ids[499], limit=500)] == ids[500:1000]
        assert [e.id for e in await journal.read(ids[-11], limit=500)] == ids[-10:]
        tg.cancel_scope.cancel()
    await store.close()


async def test_released_memory_is_read_back_from_the_database(tmp_path: Path) -> None:
    store, journal, _ = await start_host(tmp_path, {})
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        ids = await journal.append([invoice(i, InvoiceCreated) for i in range(1, 101)])
        cached = await journal.read(0, limit=500)
        assert (await journal.read(0, limit=500))[0] is cached[0]

        # Giving memory back while writes and reads go on loses nothing.
        async def release() -> None:
            for _ in range(20):
                journal.release_memory()
                await store.release_memory()

        tg.start_soon(release)
        more = []
        for i in range(101, 301):
            more += await journal.append([invoice(i, InvoiceCreated)])
            assert [e.id for e in await journal.read(more[-1] - 1)] == [more[-1]]
        journal.release_memory()
        await store.release_memory()
        from_db = await journal.read(0, limit=500)
        assert [e.id for e in from_db] == ids + more
        assert from_db[0] is not cached[0] and from_db[0] == cached[0]
        # What is appended afterwards is kept decoded again for workers that keep up.
        newest = await journal.append([invoice(301, InvoiceCreated)])
        tail = await journal.read(more[-1])
        assert [e.id for e in tail] == newest and (await journal.read(more[-1]))[0] is tail[0]
        tg.cancel_scope.cancel()
    await store.close()


async def test_commits_reach_the_database_file_without_waiting_for_a_full_wal(tmp_path: Path) -> None:
    store, journal, _ = await start_host(tmp_path, {})
    main_file_copy = tmp_path / "main-file-only.sqlite"

    def in_main_file() -> int:
        # The database file alone, without its WAL: what checkpoints have copied there.
        main_file_copy.write_bytes(store.path.read_bytes())
        conn = sqlite3.connect(f"file:{main_file_copy}?immutable=1", uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
        except sqlite3.OperationalError:  # not even the schema is there yet
            return 0
        finally:
            conn.close()

    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        # Far fewer pages than sqlite's own 1000-page checkpoint mark.
        ids = await journal.append([invoice(i, InvoiceCreated) for i in range(1, 201)])
        with anyio.fail_after(10):
            while in_main_file() < len(ids):
                await anyio.sleep(0.05)
        # Later commits follow.
        more = await journal.append([invoice(i, InvoiceCreated) for i in range(201, 211)])
        with anyio.fail_after(10):
            while in_main_file() < len(ids) + len(more):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    await store.close()


class PaymentsOnly:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def ldp_payment_event(self, daemon, event):
        self.calls += 1


async def test_a_plugin_skipping_a_run_still_stores_its_cursor(tmp_path: Path) -> None:
    plugin = PaymentsOnly()
    store, journal, host = await start_host(tmp_path, {"payments": plugin})
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        tg.start_soon(host.run_worker, "payments")
        # Three runs in quick succession: only the first is stored at once.
        for start in (1, 51, 101):
            ids = await journal.append([invoice(i, InvoiceCreated) for i in range(start, start + 50)])
            with anyio.fail_after(10):
                while host.runtimes["payments"].cursor < ids[-1]:
                    await anyio.sleep(0.001)
        with anyio.fail_after(10):
            while True:
                row = await host.runtimes["payments"].daemon.store.fetchone(
                    "SELECT position FROM journal_cursors WHERE plugin = 'payments'"
                )
                if row is not None and row[0] == journal.last_id:
                    break
                await anyio.sleep(0.01)
        assert plugin.calls == 0 and ids[-1] == journal.last_id
        tg.cancel_scope.cancel()
    await store.close()


async def test_invoice_keys_are_stored_in_add_index_order_and_old_ones_still_match(tmp_path: Path) -> None:
    """Invoice events' digests begin with their add index, so a burst's land side by side;
    a journal whose invoice digests were plain (schema 2) is moved over at start, and the
    events it holds stay duplicates."""
    path = tmp_path / "old.sqlite"
    store = Store(path)
    store.open()
    store.migrate("journal", journal_module.MIGRATIONS[:2])
    await store.close()
    old = [
        replace(invoice(i, cls), add_index=i, id=2 * i + (cls is InvoiceSettled))
        for i in range(1, 301)
        for cls in (InvoiceCreated, InvoiceSettled)
    ]
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO journal(id, type, time, body) VALUES (?, ?, ?, ?)",
            [(ev.id, ev.type, ev.time, events_module.encode_event(ev)) for ev in old],
        )
        conn.executemany(
            "INSERT INTO journal_key_digests(digest) VALUES (?)",
            [(journal_module._key_digest(ev.dedupe_key()),) for ev in old],
        )
    conn.close()

    store, journal = open_journal(path)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        again = await journal.append([replace(ev, id=0) for ev in old[-100:]])
        assert again == [0] * 100
        fresh = [
            replace(invoice(i, cls), add_index=i)
            for i in range(301, 311)
            for cls in (InvoiceCreated, InvoiceSettled)
        ]
        ids = await journal.append(fresh)
        assert all(ids) and await journal.append(fresh) == [0] * len(fresh)
        tg.cancel_scope.cancel()
    await store.close()
    conn = sqlite3.connect(path)
    digests = [row[0] for row in conn.execute("SELECT digest FROM journal_key_digests ORDER BY digest")]
    conn.close()
    assert len(digests) == 2 * 310
    assert [int.from_bytes(d[:8], "big") for d in digests] == [i for i in range(1, 311) for _ in range(2)]
