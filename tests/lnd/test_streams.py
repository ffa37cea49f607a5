"""Stream readers -> journal, against a real simnet process over gRPC+TLS+macaroons.

Each test runs the real pieces: ``LndLink`` connects to simnet and calls
``run_streams`` once LND is active; events land in a real ``Journal`` on a temporary
sqlite database. "Restarting the daemon" means closing all of that and opening it
again on the same database, as a new process would.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest

from lightningd_py import events as ev
from lightningd_py.config import LndSettings
from lightningd_py.daemon import NodeStatus
from lightningd_py.demo import SimnetProcess
from lightningd_py.errors import LndError
from lightningd_py.journal import Journal
from lightningd_py.lnd.client import LndClient
from lightningd_py.lnd.expiry import ADD_INDEX, OPEN_FLOOR, SETTLE_INDEX, ExpiryTracker
from lightningd_py.lnd.link import LND_CIPHER_SUITES, LndLink, Stubs
from lightningd_py.lnd.reconcile import FORWARDS_TIME, PAYMENTS_INDEX
from lightningd_py.lnd.rpc import invoices_pb2_grpc, router_pb2_grpc, stateservice_pb2_grpc
from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import lightning_pb2_grpc as lnrpc_grpc
from lightningd_py.lnd.streams import BATCH, READY_KEY, StreamEnded, _pump, _Unbroken, run_streams
from lightningd_py.simnet.control import AsyncSimnetControl
from lightningd_py.store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture
def sim(tmp_path_factory: pytest.TempPathFactory) -> Any:
    node = SimnetProcess(
        tmp_path_factory.mktemp("simnet"), args=["--channels", "3", "--peers", "2", "--seed", "7"]
    )
    node.start()
    yield node
    node.stop()


def lnd_settings(sim: SimnetProcess, **overrides: Any) -> LndSettings:
    data: dict[str, Any] = {
        "host": sim.grpc,
        "tls_cert": str(sim.tls_cert),
        "macaroon": str(sim.admin_macaroon),
        "reconnect_min": 0.05,
        "reconnect_max": 0.3,
        "rpc_timeout": 10.0,
        "invoice_sweep_interval": 0.5,
        "invoice_page_size": 50,
    }
    data.update(overrides)
    return LndSettings.model_validate(data)


@dataclass
class Daemon:
    """The reader side of one daemon "process"."""

    journal: Journal
    link: LndLink
    node: NodeStatus
    tracker: ExpiryTracker
    control: AsyncSimnetControl
    ends: list[BaseException] = field(default_factory=list)
    sessions: int = 0

    @property
    def lnd(self) -> LndClient:
        return self.link.client

    async def events(self, *types: type[ev.Event]) -> list[Any]:
        out: list[Any] = []
        after = 0
        while True:
            batch = await self.journal.read(after, limit=5000)
            if not batch:
                return [e for e in out if not types or isinstance(e, types)]
            out.extend(batch)
            after = batch[-1].id

    async def wait_for(self, predicate: Callable[[], Any], within: float = 10.0) -> Any:
        return await wait_until(predicate, within)

    async def wait_events(
        self, cls: type[ev.Event], count: int, within: float = 10.0, **match: Any
    ) -> list[Any]:
        async def found() -> list[Any] | None:
            got = [e for e in await self.events(cls) if all(getattr(e, k) == v for k, v in match.items())]
            return got if len(got) >= count else None

        return await self.wait_for(found, within)

    async def wait_active(self, within: float = 15.0) -> None:
        await self.wait_for(lambda: self.node.extra.get(READY_KEY), within)


async def wait_until(predicate: Callable[[], Any], within: float = 10.0) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something true."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await anyio.sleep(0.05)


@asynccontextmanager
async def daemon(
    sim: SimnetProcess, db: Path, streams: bool = True, **overrides: Any
) -> AsyncIterator[Daemon]:
    settings = lnd_settings(sim, **overrides)
    store = Store(db)
    store.open()
    journal = Journal(store)
    journal.open()
    node = NodeStatus()
    tracker = ExpiryTracker(journal, settings)
    link = LndLink(settings, node)
    control = AsyncSimnetControl(sim.control_url)
    d = Daemon(journal, link, node, tracker, control)

    async def on_active(stubs: Stubs) -> None:
        d.sessions += 1
        if not streams:
            node.extra[READY_KEY] = True
            await anyio.sleep_forever()
        try:
            await run_streams(stubs, journal, settings, node, tracker)
        except LndError as exc:
            d.ends.append(exc)
            raise

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            tg.start_soon(link.run, on_active)
            await d.wait_active()
            yield d
            tg.cancel_scope.cancel()
    finally:
        await control.close()
        await store.close()


def counts(events: list[Any]) -> Counter[str]:
    """How many times each fact (dedupe key) is in the journal."""
    return Counter(e.dedupe_key() for e in events if e.dedupe_key() is not None)


def assert_no_duplicates(events: list[Any]) -> None:
    repeated = {k: n for k, n in counts(events).items() if n > 1}
    assert not repeated, repeated


def setup_client(sim: SimnetProcess, tmp_path: Path) -> AbstractAsyncContextManager[Daemon]:
    """A daemon without stream readers: a plain LND client to act on simnet while the
    daemon under test is down."""
    return daemon(sim, tmp_path / "setup.sqlite", streams=False)


async def test_first_sync_journals_existing_invoices_in_pages(sim: SimnetProcess, tmp_path: Path) -> None:
    hashes: list[str] = []
    async with setup_client(sim, tmp_path) as setup:
        for i in range(120):
            added = await setup.lnd.add_invoice(value_msat=1000 + i, memo=f"n{i}")
            hashes.append(added.payment_hash)
        for h in hashes[:30]:
            await setup.control.settle_invoice(h)
        await setup.lnd.cancel_invoice(hashes[40])

    async with daemon(sim, tmp_path / "db.sqlite") as d:  # page size 50: three pages
        events = await d.events()
        created = [e for e in events if isinstance(e, ev.InvoiceCreated)]
        assert [e.payment_hash for e in created] == hashes
        assert created[5].value_msat == 1005 and created[5].memo == "n5"
        settled = [e for e in events if isinstance(e, ev.InvoiceSettled)]
        assert sorted(e.payment_hash for e in settled) == sorted(hashes[:30])
        assert all(e.preimage and e.amt_paid_msat == e.value_msat for e in settled)
        assert [e.payment_hash for e in events if isinstance(e, ev.InvoiceCanceled)] == [hashes[40]]
        assert_no_duplicates(events)
        assert d.journal.position(ADD_INDEX) == 120
        assert d.journal.position(SETTLE_INDEX) == 30
        # Open invoices are tracked for expiry; the floor is the oldest open one.
        assert len(d.tracker) == 120 - 30 - 1
        assert d.journal.position(OPEN_FLOOR) == 31


async def test_live_settle_then_daemon_restart_resumes_without_duplicates(
    sim: SimnetProcess, tmp_path: Path
) -> None:
    db = tmp_path / "db.sqlite"
    async with daemon(sim, db) as d:
        first = [(await d.lnd.add_invoice(value_msat=2000 + i)).payment_hash for i in range(5)]
        await d.wait_events(ev.InvoiceCreated, 5)
        for h in first[:2]:
            await d.control.settle_invoice(h)
        settled = await d.wait_events(ev.InvoiceSettled, 2)
        assert {e.payment_hash for e in settled} == set(first[:2])
        assert settled[0].settle_index in (1, 2)

    # While the daemon is down: two earlier invoices and one new one are settled.
    async with setup_client(sim, tmp_path) as setup:
        for h in first[2:4]:
            await setup.control.settle_invoice(h)
        later = [(await setup.lnd.add_invoice(value_msat=3000 + i)).payment_hash for i in range(3)]
        await setup.control.settle_invoice(later[0])

    async with daemon(sim, db) as d:
        await d.wait_events(ev.InvoiceSettled, 5)
        await d.wait_events(ev.InvoiceCreated, 8)
        await anyio.sleep(0.3)  # anything repeated by the replay would land by now
        events = await d.events()
        assert_no_duplicates(events)
        assert {e.payment_hash for e in events if isinstance(e, ev.InvoiceSettled)} == {
            *first[:4],
            later[0],
        }
        assert d.journal.position(SETTLE_INDEX) == 5 and d.journal.position(ADD_INDEX) == 8
        # And live again after the restart.
        await d.control.settle_invoice(later[1])
        await d.wait_events(ev.InvoiceSettled, 1, payment_hash=later[1])
        assert_no_duplicates(await d.events())


async def test_settled_during_the_catch_up_after_it_read_the_invoice_open(
    sim: SimnetProcess, tmp_path: Path
) -> None:
    """The catch-up reads an invoice OPEN on its first page; while it waits for the next
    page that invoice is paid, then a newer one that a later page shows settled. The
    first settlement has the lower settle index and is journaled from the stream at once,
    not left to the pending-invoice sweep (a minute away here)."""
    hashes: list[str] = []
    async with setup_client(sim, tmp_path) as setup:
        for i in range(120):
            hashes.append((await setup.lnd.add_invoice(value_msat=1000 + i)).payment_hash)
        # The reader's first call (where the stream starts) and the first page are answered.
        await setup.control.hold_calls("ListInvoices", after=2)

        async def pay_while_held() -> None:
            async def held() -> bool:
                state = await setup.control.state()
                return state["held_calls"].get("ListInvoices", {}).get("waiting") == 1

            await wait_until(held, within=10)
            await setup.control.settle_invoice(hashes[10])  # on the first page, read open
            await setup.control.settle_invoice(hashes[100])  # on the third page
            await setup.control.release_calls("ListInvoices")

        async with anyio.create_task_group() as tg:
            tg.start_soon(pay_while_held)
            async with daemon(sim, tmp_path / "db.sqlite", invoice_sweep_interval=60) as d:
                settled = await d.wait_events(ev.InvoiceSettled, 2, within=5)
                assert {e.payment_hash for e in settled} == {hashes[10], hashes[100]}
                await d.wait_for(lambda: d.journal.position(SETTLE_INDEX) == 2)
                await anyio.sleep(0.3)
                assert_no_duplicates(await d.events())
                assert len(d.tracker) == 118


def test_the_unbroken_settle_index_waits_for_every_gap_below_it() -> None:
    unbroken = _Unbroken(10)
    tops = []
    for index in (13, 11, 9, 12, 11, 16, 17, 14, 15):
        unbroken.add(index)
        tops.append(unbroken.top)
    assert tops == [10, 11, 11, 13, 13, 13, 13, 14, 17]
    assert not unbroken._ahead  # nothing kept once the gaps are filled


async def test_a_settled_burst_leaves_nothing_of_it_in_memory(sim: SimnetProcess, tmp_path: Path) -> None:
    """Once a burst of invoices is settled, nothing the reader and the expiry tracker
    made for them stays alive (not even the stream's last messages), while the expiry
    timers wait as usual."""
    tracemalloc.start(1)
    try:
        async with daemon(sim, tmp_path / "db.sqlite", invoice_sweep_interval=60) as d:
            await d.control.burst_settle(5000)
            await d.wait_for(lambda: d.journal.position(SETTLE_INDEX) == 5000, within=60)
            assert len(d.tracker) == 0
            d.journal.release_memory()  # the decoded tail of the journal
            gc.collect()
            held = sum(
                stat.size
                for stat in tracemalloc.take_snapshot().statistics("filename")
                if stat.traceback[0].filename.endswith(("lnd/expiry.py", "lnd/convert.py", "lnd/streams.py"))
            )
            # One burst's tracking is about 1 MB (a hash, a timer entry, a due time each).
            assert held < 250_000, held
            # Nor does the reader keep the last messages it read while the node is quiet
            # (gRPC's own stream iterator holds on to the latest one).
            messages = [o for o in gc.get_objects() if isinstance(o, ln.Invoice)]
            assert len(messages) <= 1, f"{len(messages)} invoice messages still held"
    finally:
        tracemalloc.stop()


async def test_back_after_a_long_stop_nothing_live_waits_behind_a_replay(
    sim: SimnetProcess, tmp_path: Path
) -> None:
    """Invoices made and settled while the daemon was stopped are journaled from
    ListInvoices; the invoice stream starts after them, so LND replays none of the 4,000
    messages the catch-up covered before the first live update."""
    db = tmp_path / "db.sqlite"
    async with daemon(sim, db) as d:
        await d.control.burst_settle(10)
        await d.wait_for(lambda: d.journal.position(SETTLE_INDEX) == 10)
    async with setup_client(sim, tmp_path) as setup:
        await setup.control.burst_settle(2000)
        replayed = (await setup.control.state())["invoices_replayed"]

    async with daemon(sim, db) as d:
        assert d.journal.position(SETTLE_INDEX) == 2010
        added = await d.lnd.add_invoice(value_msat=1000)
        await d.control.settle_invoice(added.payment_hash)
        await d.wait_events(ev.InvoiceSettled, 1, payment_hash=added.payment_hash)
        assert (await d.control.state())["invoices_replayed"] - replayed < 10
        events = await d.events()
        assert_no_duplicates(events)
        assert len([e for e in events if isinstance(e, ev.InvoiceSettled)]) == 2011


async def test_lnd_restart_ends_streams_with_ok_and_reconnects(sim: SimnetProcess, tmp_path: Path) -> None:
    settings = lnd_settings(sim)
    store = Store(tmp_path / "db.sqlite")
    store.open()
    journal = Journal(store)
    journal.open()
    tracker = ExpiryTracker(journal, settings)
    node = NodeStatus()
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        channel, stubs = await connect(sim)
        control = AsyncSimnetControl(sim.control_url)
        try:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as inner:
                    outcome: list[BaseException] = []

                    async def streams() -> None:
                        try:
                            await run_streams(stubs, journal, settings, node, tracker)
                        except StreamEnded as exc:
                            outcome.append(exc)

                    inner.start_soon(streams)
                    await wait_until(lambda: node.extra.get(READY_KEY))
                    await control.restart(down_seconds=0.3)
            assert len(outcome) == 1
            assert isinstance(outcome[0], StreamEnded) and isinstance(outcome[0], LndError)
            assert outcome[0].code == "OK" and outcome[0].kind == "unreachable"
            assert node.extra[READY_KEY] is False
        finally:
            await control.close()
            await channel.close()
        tg.cancel_scope.cancel()
    await store.close()

    # The link treats it as a disconnect: it reconnects and the streams resume.
    async with daemon(sim, tmp_path / "db.sqlite") as d:
        added = await d.lnd.add_invoice(value_msat=1234)
        await d.control.restart(down_seconds=0.3)
        await d.wait_for(lambda: d.sessions >= 2 and d.node.extra.get(READY_KEY), within=20)
        await d.control.settle_invoice(added.payment_hash)
        await d.wait_events(ev.InvoiceSettled, 1, payment_hash=added.payment_hash)
        assert_no_duplicates(await d.events())


async def test_expiry_is_detected_and_journaled_as_expired(sim: SimnetProcess, tmp_path: Path) -> None:
    async with daemon(sim, tmp_path / "db.sqlite") as d:
        short = await d.lnd.add_invoice(value_msat=1000, expiry=1)
        long = await d.lnd.add_invoice(value_msat=1000, expiry=3600)
        expired = await d.wait_events(ev.InvoiceExpired, 1, within=15)
        assert expired[0].payment_hash == short.payment_hash
        # The tracker lets go once the append that journaled the expiry has returned.
        with anyio.fail_after(5):
            while short.payment_hash in d.tracker:
                await anyio.sleep(0.01)
        assert long.payment_hash in d.tracker
        assert not await d.events(ev.InvoiceCanceled)


async def test_cancel_is_detected_and_journaled_as_canceled(sim: SimnetProcess, tmp_path: Path) -> None:
    async with daemon(sim, tmp_path / "db.sqlite") as d:
        added = await d.lnd.add_invoice(value_msat=1000, expiry=3600)
        await d.wait_events(ev.InvoiceCreated, 1)
        await d.lnd.cancel_invoice(added.payment_hash)
        canceled = await d.wait_events(ev.InvoiceCanceled, 1, within=10)  # found by the sweep
        assert canceled[0].payment_hash == added.payment_hash
        assert not await d.events(ev.InvoiceExpired)
        assert added.payment_hash not in d.tracker


async def test_invoices_lnd_deleted_end_with_what_the_daemon_kept_of_them(
    sim: SimnetProcess, tmp_path: Path
) -> None:
    """LND deletes canceled invoices (``deletecanceledinvoice``, or every expired one with
    ``gc-canceled-invoices-on-the-fly``): their end is journaled from what the tracker
    kept of them, since LookupInvoice no longer finds them."""
    async with daemon(sim, tmp_path / "db.sqlite") as d:
        # The tracker's lookups wait until both invoices are gone.
        await d.control.hold_calls("LookupInvoice")
        try:
            canceled = await d.lnd.add_invoice(value_msat=5000, memo="order 41", expiry=3600)
            expiring = await d.lnd.add_invoice(value_msat=7000, memo="order 42", expiry=1, private=True)
            await d.wait_events(ev.InvoiceCreated, 1, payment_hash=expiring.payment_hash)
            await d.lnd.cancel_invoice(canceled.payment_hash)
            await d.control.delete_invoice(canceled.payment_hash)
            await anyio.sleep(2)  # simnet cancels the expiring one, as LND does
            await d.control.delete_invoice(expiring.payment_hash)
        finally:
            await d.control.release_calls("LookupInvoice")
        ended = await d.wait_events(ev.InvoiceCanceled, 1, payment_hash=canceled.payment_hash)
        assert (ended[0].memo, ended[0].value_msat, ended[0].expiry) == ("order 41", 5000, 3600)
        assert ended[0].add_index == canceled.add_index
        expired = await d.wait_events(ev.InvoiceExpired, 1, payment_hash=expiring.payment_hash)
        assert (expired[0].memo, expired[0].value_msat, expired[0].expiry) == ("order 42", 7000, 1)
        assert expired[0].private and expired[0].add_index == expiring.add_index
        created = (await d.events(ev.InvoiceCreated))[-1]
        assert expired[0].creation_date == created.creation_date
        await d.wait_for(lambda: len(d.tracker) == 0)
        assert_no_duplicates(await d.events())


async def test_many_open_invoices_cost_little_memory_each(sim: SimnetProcess, tmp_path: Path) -> None:
    """The tracker keeps each open invoice in a couple of hundred bytes, so a merchant
    with tens of thousands of open invoices (or a burst of them) costs a few MB."""
    tracemalloc.start(1)
    try:
        async with daemon(sim, tmp_path / "db.sqlite", invoice_sweep_interval=60) as d:
            before = len(d.tracker)
            gc.collect()
            start = tracemalloc.take_snapshot()
            added = []
            for first in range(0, 1000, 100):
                added += await asyncio.gather(
                    *(d.lnd.add_invoice(1000 + i, f"order {i}", 3600) for i in range(first, first + 100))
                )
            await d.wait_for(lambda: len(d.tracker) == before + len(added), within=30)
            d.journal.release_memory()
            gc.collect()
            grown = sum(
                stat.size_diff
                for stat in tracemalloc.take_snapshot().compare_to(start, "filename")
                if stat.traceback[0].filename.endswith(("lnd/expiry.py", "lnd/convert.py"))
            )
            assert grown / len(added) < 300, grown / len(added)
    finally:
        tracemalloc.stop()


async def test_the_room_of_a_burst_of_open_invoices_is_given_back(sim: SimnetProcess, tmp_path: Path) -> None:
    """Once a burst's invoices are settled, the open set shrinks back to what is still
    open, and nothing (a timer loop, a sweep) keeps the burst-sized arrays alive."""
    tracemalloc.start(1)
    try:
        async with daemon(sim, tmp_path / "db.sqlite", invoice_sweep_interval=0.5) as d:
            before = len(d.tracker)
            gc.collect()
            start = tracemalloc.take_snapshot()
            settled = len([e for e in await d.events() if isinstance(e, ev.InvoiceSettled)])
            await d.control.burst_settle(3000)
            await d.wait_events(ev.InvoiceSettled, settled + 3000, within=60)
            await d.wait_for(lambda: len(d.tracker) == before, within=30)
            await anyio.sleep(1.2)  # a sweep or two
            gc.collect()
            kept = sum(
                stat.size_diff
                for stat in tracemalloc.take_snapshot().compare_to(start, "filename")
                if stat.traceback[0].filename.endswith(("lnd/expiry.py", "lnd/openset.py"))
            )
            assert kept < 20_000, kept
    finally:
        tracemalloc.stop()


async def test_the_sweeps_suspects_give_their_room_back_once_forgotten(
    sim: SimnetProcess, tmp_path: Path
) -> None:
    """Invoices a sweep finds missing from LND's pending list are held as suspects until
    the reader journals their end. Once the last of them is forgotten, the set that
    held them does not keep the size it grew to (a burst's worth of hashes)."""
    async with daemon(sim, tmp_path / "db.sqlite", streams=False) as d:
        channel, stubs = await connect(sim)
        try:
            tracker = ExpiryTracker(d.journal, lnd_settings(sim, invoice_page_size=500))
            added = [await d.control.add_invoice(value_msat=1000, expiry=3600) for _ in range(1500)]
            # What the reader does with each invoice the stream reports created.
            first = min(a["add_index"] for a in added)
            listed = await stubs.lightning.ListInvoices(
                ln.ListInvoiceRequest(pending_only=True, index_offset=first - 1, num_max_invoices=len(added))
            )
            for inv in listed.invoices:
                tracker.track(inv)
            tracker.add_index = max(a["add_index"] for a in added)
            assert len(tracker) == len(added)
            for a in added:
                await d.control.settle_invoice(a["payment_hash"])
            await tracker.sweep(stubs)  # every one of them is now a suspect
            grown = sys.getsizeof(tracker._gone)
            assert grown > 16_384, grown
            for a in added:
                tracker.forget(a["payment_hash"])
            assert all(a["payment_hash"] not in tracker for a in added)
            assert sys.getsizeof(tracker._gone) < 1024, sys.getsizeof(tracker._gone)
        finally:
            await channel.close()


async def test_invoice_ends_while_daemon_down_are_journaled_once(sim: SimnetProcess, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    async with daemon(sim, db) as d:
        pinned = await d.lnd.add_invoice(value_msat=1000, expiry=3600)  # keeps the open floor low
        canceled = await d.lnd.add_invoice(value_msat=1000, expiry=4)
        expiring = await d.lnd.add_invoice(value_msat=1000, expiry=2)
        await d.lnd.cancel_invoice(canceled.payment_hash)
        await d.wait_events(ev.InvoiceCanceled, 1, payment_hash=canceled.payment_hash)
        assert d.journal.position(OPEN_FLOOR) == pinned.add_index
    # Down past both expiry times: simnet cancels the expiring one silently.
    await anyio.sleep(4.5)
    async with daemon(sim, db) as d:
        await d.wait_events(ev.InvoiceExpired, 1, payment_hash=expiring.payment_hash)
        await anyio.sleep(1.2)  # a sweep or two
        events = await d.events()
        assert_no_duplicates(events)
        ends = [e for e in events if isinstance(e, (ev.InvoiceCanceled, ev.InvoiceExpired))]
        assert sorted((type(e).__name__, e.payment_hash) for e in ends) == sorted(
            [("InvoiceCanceled", canceled.payment_hash), ("InvoiceExpired", expiring.payment_hash)]
        )
        assert pinned.payment_hash in d.tracker and len(d.tracker) == 1


async def test_hold_invoice_accepted_then_settled(sim: SimnetProcess, tmp_path: Path) -> None:
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    async with daemon(sim, tmp_path / "db.sqlite") as d:
        await d.lnd.add_hold_invoice(payment_hash, 5000, "hold", 3600)
        await d.wait_events(ev.InvoiceCreated, 1, payment_hash=payment_hash)
        await d.control.settle_invoice(payment_hash)  # the payer's HTLC arrives: ACCEPTED
        accepted = await d.wait_events(ev.InvoiceAccepted, 1, payment_hash=payment_hash)
        assert accepted[0].preimage == ""
        await d.lnd.settle_invoice(preimage.hex())
        settled = await d.wait_events(ev.InvoiceSettled, 1, payment_hash=payment_hash)
        assert settled[0].preimage == preimage.hex()
        assert payment_hash not in d.tracker
        assert_no_duplicates(await d.events())


async def test_channels_reconciled_after_reconnect(sim: SimnetProcess, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    async with daemon(sim, db) as d:
        state = await d.control.state()
        start = [c for c in state["channel_list"] if c["status"] == "open"]
        opened = await d.wait_events(ev.ChannelOpened, len(start))
        assert {e.channel_point for e in opened} == {c["channel_point"] for c in start}
        peer = start[0]["peer"]
        live = await d.control.open_channel(peer, 500_000, confirm=True)
        await d.wait_events(ev.ChannelOpened, 1, channel_point=live["channel_point"])

    async with setup_client(sim, tmp_path) as setup:
        while_down = await setup.control.open_channel(peer, 300_000, confirm=True)
        await setup.control.close_channel(start[1]["chan_id"], confirm=True)
        pending = await setup.control.open_channel(peer, 200_000)  # not confirmed yet

    async with daemon(
        sim,
        db,
    ) as d:
        await d.wait_events(ev.ChannelOpened, 1, channel_point=while_down["channel_point"])
        closed = await d.wait_events(ev.ChannelClosed, 1, channel_point=start[1]["channel_point"])
        assert closed[0].close_type == "COOPERATIVE_CLOSE"
        await d.wait_events(ev.ChannelPendingOpen, 1, channel_point=pending["channel_point"])
        assert_no_duplicates(await d.events())


async def test_peer_channel_activity_and_backup_events(sim: SimnetProcess, tmp_path: Path) -> None:
    async with daemon(sim, tmp_path / "db.sqlite") as d:
        exported = await d.wait_events(ev.ChannelBackupUpdated, 1)  # ExportAllChannelBackups on connect
        state = await d.control.state()
        chan = next(c for c in state["channel_list"] if c["status"] == "open")
        assert chan["channel_point"] in exported[0].chan_points and exported[0].multi_chan_backup
        await d.control.set_channel_active(chan["chan_id"], False)
        await d.wait_events(ev.ChannelInactive, 1, channel_point=chan["channel_point"])
        await d.control.set_channel_active(chan["chan_id"], True)
        await d.wait_events(ev.ChannelActive, 1, channel_point=chan["channel_point"])
        await d.control.set_peer_online(chan["peer"], False)
        await d.wait_events(ev.PeerOffline, 1, pubkey=chan["peer"])
        await d.control.set_peer_online(chan["peer"], True)
        await d.wait_events(ev.PeerOnline, 1, pubkey=chan["peer"])
        opened = await d.control.open_channel(chan["peer"], 400_000, confirm=True)
        backups = await d.wait_for(
            lambda: _backups_with(d, opened["channel_point"])  # from SubscribeChannelBackups
        )
        assert backups[-1].multi_chan_backup != exported[0].multi_chan_backup


async def _backups_with(d: Daemon, channel_point: str) -> list[Any]:
    return [e for e in await d.events(ev.ChannelBackupUpdated) if channel_point in e.chan_points]


async def test_payments_live_and_caught_up_with_list_payments(sim: SimnetProcess, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    async with daemon(sim, db) as d:
        state = await d.control.state()
        peer = state["channel_list"][0]["peer"]
        bill = await d.control.external_invoice(peer, 10_000, "live")
        await d.lnd.send_payment(bill["payment_request"], fee_limit_msat=1000, timeout_seconds=10)
        ok = await d.wait_events(ev.PaymentSucceeded, 1, payment_hash=bill["payment_hash"])
        assert ok[0].payment_preimage == bill["preimage"] and ok[0].value_msat == 10_000
        await d.control.fail_next_payment("NO_ROUTE")
        bad = await d.control.external_invoice(peer, 20_000, "fails")
        await d.lnd.send_payment(bad["payment_request"], fee_limit_msat=1000, timeout_seconds=10)
        failed = await d.wait_events(ev.PaymentFailed, 1, payment_hash=bad["payment_hash"])
        assert failed[0].failure_reason == "FAILURE_REASON_NO_ROUTE"
        await d.wait_for(lambda: (d.journal.position(PAYMENTS_INDEX) or 0) >= 2)

    async with setup_client(sim, tmp_path) as setup:
        missed = await setup.control.external_invoice(peer, 30_000, "while down")
        await setup.lnd.send_payment(missed["payment_request"], fee_limit_msat=1000, timeout_seconds=10)

    async with daemon(sim, db) as d:
        caught = await d.wait_events(ev.PaymentSucceeded, 1, payment_hash=missed["payment_hash"])
        assert caught[0].value_msat == 30_000
        assert d.journal.position(PAYMENTS_INDEX) == caught[0].payment_index
        events = await d.events()
        assert_no_duplicates(events)
        assert len([e for e in events if isinstance(e, ev.PaymentEvent)]) == 3


def _chan_ids(state: dict[str, Any]) -> list[int]:
    return [int(c["chan_id"]) for c in state["channel_list"] if c["status"] == "open" and c["active"]]


async def test_forwards_from_htlc_events_and_forwarding_history(sim: SimnetProcess, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    async with daemon(sim, db) as d:
        a, b, c = _chan_ids(await d.control.state())[:3]
        await d.control.set_balance(a, 100_000_000)  # inbound on a, outbound on b
        await d.control.set_balance(b, 900_000_000)
        await d.control.forward(a, b, 50_000, fee_msat=7)
        settled = await d.wait_events(ev.ForwardSettled, 1)
        assert (settled[0].incoming_chan_id, settled[0].outgoing_chan_id) == (a, b)
        assert (settled[0].amt_in_msat, settled[0].amt_out_msat, settled[0].fee_msat) == (50_007, 50_000, 7)
        await d.control.forward(a, b, 40_000, fee_msat=5, fail=True)
        failed = await d.wait_events(ev.ForwardFailed, 1)
        assert failed[0].amt_in_msat == 40_005
        await d.wait_for(lambda: d.journal.position(FORWARDS_TIME) == settled[0].timestamp_ns)

    async with setup_client(sim, tmp_path) as setup:
        await setup.control.forward(a, c, 10_000, fee_msat=3)

    async with daemon(sim, db) as d:
        history = await d.wait_events(ev.ForwardSettled, 1, outgoing_chan_id=c)
        assert history[0].fee_msat == 3 and history[0].incoming_chan_id == a
        events = await d.events(ev.ForwardSettled)
        assert len(events) == 2  # the live forward is not journaled again from history
        assert d.journal.position(FORWARDS_TIME) == history[0].timestamp_ns


class _Repeating:
    """Delivers every message of a real LND stream twice, as LND may for HTLC events."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._again: Any = None

    async def read(self) -> Any:
        if self._again is not None:
            message, self._again = self._again, None
            return message
        message = await self._call.read()
        if message is not grpc.aio.EOF:
            self._again = message
        return message

    def cancel(self) -> bool:
        return self._call.cancel()


@dataclass
class _RepeatingRouter:
    router: Any

    def SubscribeHtlcEvents(self, request: Any, **kwargs: Any) -> _Repeating:
        return _Repeating(self.router.SubscribeHtlcEvents(request, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.router, name)


async def test_repeated_htlc_events_are_journaled_once(sim: SimnetProcess, tmp_path: Path) -> None:
    settings = lnd_settings(sim)
    store = Store(tmp_path / "db.sqlite")
    store.open()
    journal = Journal(store)
    journal.open()
    tracker = ExpiryTracker(journal, settings)
    node = NodeStatus()
    channel, stubs = await connect(sim)
    repeating = Stubs(
        lightning=stubs.lightning,
        router=_RepeatingRouter(stubs.router),  # type: ignore[arg-type]
        invoices=stubs.invoices,
        state=stubs.state,
        channel=stubs.channel,
        state_channel=stubs.state_channel,
    )
    control = AsyncSimnetControl(sim.control_url)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            tg.start_soon(run_streams, repeating, journal, settings, node, tracker)
            with anyio.fail_after(15):
                await wait_until(lambda: node.extra.get(READY_KEY))
                a, b = _chan_ids(await control.state())[:2]
                await control.set_balance(a, 100_000_000)
                await control.set_balance(b, 900_000_000)
                for _ in range(3):
                    await control.forward(a, b, 1000, fee_msat=1)
                await control.forward(a, b, 1000, fee_msat=1, fail=True)

                async def four() -> bool:
                    return len(await journal.read(0, 1000, types={"forward.settled", "forward.failed"})) >= 4

                await wait_until(four)
                await anyio.sleep(0.2)
            forwards = await journal.read(0, 1000, types={"forward.settled", "forward.failed"})
            assert len(forwards) == 4
            assert journal.duplicates == 0  # repeats were dropped before the journal
            tg.cancel_scope.cancel()
    finally:
        await control.close()
        await channel.close()
        await store.close()


class _HandlerFailed(Exception):
    pass


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for exc in group.exceptions for leaf in _leaves(exc)]
    return [group]


@asynccontextmanager
async def _busy_invoice_stream(sim: SimnetProcess) -> AsyncIterator[Any]:
    """A SubscribeInvoices call with more waiting to be read than ``_pump`` buffers."""
    channel, stubs = await connect(sim)
    control = AsyncSimnetControl(sim.control_url)

    async def subscribed() -> bool:
        return bool((await control.state())["subscribers"]["invoices"])

    call = stubs.lightning.SubscribeInvoices(ln.InvoiceSubscription())
    try:
        await wait_until(subscribed, within=5)
        await control.burst_settle(2 * BATCH)
        yield call
    finally:
        # The call ends, and the exception cycles that still hold it are collected, while
        # this test's event loop runs: a gRPC call finalized later calls into its closed
        # loop and fails whichever test runs then.
        call.cancel()
        with anyio.fail_after(5):
            await call.code()
        await control.close()
        await channel.close()
        gc.collect()


async def test_pump_ends_with_the_handlers_error_alone(sim: SimnetProcess) -> None:
    """The handler fails while the reading task waits on the full buffer: the handler's
    error leaves the pump, and the reading task, finding its consumer gone, adds none."""

    async def handle(batch: list[Any]) -> None:
        await anyio.sleep(0.5)  # the reading task fills the buffer meanwhile
        raise _HandlerFailed

    async with _busy_invoice_stream(sim) as call:
        with pytest.raises(BaseExceptionGroup) as raised:
            await _pump(call, "invoices", handle)
    assert [type(e) for e in _leaves(raised.value)] == [_HandlerFailed]


async def test_pump_cancelled_mid_stream_ends_with_the_cancellation(sim: SimnetProcess) -> None:
    """Its task cancelled while the reading task waits on the full buffer (how the link
    ends ``on_active`` when the daemon stops during a burst): the cancellation is all that
    leaves the pump, not a BrokenResourceError the link would log as a failure."""
    handled: list[int] = []

    async def handle(batch: list[Any]) -> None:
        handled.append(len(batch))
        await anyio.sleep(10)

    async with _busy_invoice_stream(sim) as call:
        task = asyncio.ensure_future(_pump(call, "invoices", handle))
        await wait_until(lambda: handled)
        await anyio.sleep(0.3)  # the reading task fills the buffer meanwhile
        task.cancel()
        await asyncio.wait([task])
    assert task.cancelled(), task.exception()


@pytest.mark.slow
async def test_burst_settle_throughput(sim: SimnetProcess, tmp_path: Path) -> None:
    """Prints events/s from a 20,000-invoice burst-settle into the journal (not asserted)."""
    count = 20_000
    # The default sweep interval: a sweep every 0.5 s would measure simnet's ListInvoices.
    async with daemon(sim, tmp_path / "db.sqlite", invoice_page_size=1000, invoice_sweep_interval=60) as d:
        started = time.perf_counter()
        burst = await d.control.burst_settle(count, value_msat=1000)
        await d.wait_for(
            lambda: (d.journal.position(SETTLE_INDEX) or 0) >= burst["last_settle_index"], within=120
        )
        elapsed = time.perf_counter() - started
        journaled = d.journal.appended
        print(
            f"\nburst: {count} invoices created+settled by simnet in "
            f"{burst['create_seconds'] + burst['settle_seconds']:.2f} s; "
            f"{journaled} events journaled in {elapsed:.2f} s = {journaled / elapsed:,.0f} events/s, "
            f"{count / elapsed:,.0f} settlements/s"
        )
        settled = await d.events(ev.InvoiceSettled)
        assert len(settled) == count
    # The same history again, as a first sync through ListInvoices pages (catch-up).
    started = time.perf_counter()
    async with daemon(sim, tmp_path / "fresh.sqlite", invoice_page_size=1000, invoice_sweep_interval=60) as d:
        elapsed = time.perf_counter() - started
        assert d.journal.position(SETTLE_INDEX) == burst["last_settle_index"]
        print(
            f"catch-up: {count} settled invoices ({d.journal.appended} events) journaled from ListInvoices "
            f"in {elapsed:.2f} s = {count / elapsed:,.0f} settlements/s"
        )


async def connect(sim: SimnetProcess) -> tuple[grpc.aio.Channel, Stubs]:
    """Stubs on a channel of our own (TLS + macaroon), without the link."""
    os.environ.setdefault("GRPC_SSL_CIPHER_SUITES", LND_CIPHER_SUITES)
    macaroon = sim.admin_macaroon.read_bytes().hex()

    def auth(context: Any, callback: Any) -> None:
        callback((("macaroon", macaroon),), None)

    tls = grpc.ssl_channel_credentials(root_certificates=sim.tls_cert.read_bytes())
    creds = grpc.composite_channel_credentials(tls, grpc.metadata_call_credentials(auth))
    channel = grpc.aio.secure_channel(sim.grpc, creds)
    stubs = Stubs(
        lightning=lnrpc_grpc.LightningStub(channel),
        router=router_pb2_grpc.RouterStub(channel),
        invoices=invoices_pb2_grpc.InvoicesStub(channel),
        state=stateservice_pb2_grpc.StateStub(channel),
        channel=channel,
        state_channel=channel,
    )
    return channel, stubs
