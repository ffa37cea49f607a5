"""Event-path benchmark: LND stream -> journal -> plugin.

Prints, for one run on this machine:

1. the raw drain rate: settlements per second this process reads off simnet's
   streams and throws away (the baseline): SubscribeInvoices and SubscribeHtlcEvents,
   the four messages the daemon reads per settlement; and, for comparison, the
   invoice stream alone;
2. the pipeline rate: settlements per second from the same streams through the
   daemon's readers, the journal (sqlite, batched) and a worker to a no-op plugin, in
   the same process, and its ratio to the baseline (goal >= 10,000/s and >= 0.5);
3. with every built-in plugin on, as a real ``lightningd-py run`` process: the time from
   start to READY=1 (goal < 1.5 s), the settlement rate until every plugin's cursor
   has passed the burst, and the resident memory idle (on a node without history, and
   after the first sync of the invoices the first two measurements made) and after
   1,000,000 more events (goals < 80 MB idle, growth < 10 %);
4. the catch-up time: 100,000 settlements made while the daemon was stopped, from its
   start until every plugin has them (goal < 15 s).

Usage: python bench/events.py [--settlements 20000] [--events 1000000] [--catch-up 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio

from lightningd_py.config import load_config
from lightningd_py.daemon import NodeStatus
from lightningd_py.demo import DaemonProcess, SimnetProcess, daemon_config, free_port, wait_for, write_config
from lightningd_py.events import InvoiceSettled
from lightningd_py.hookspecs import hookimpl
from lightningd_py.lnd.link import LndLink, Stubs
from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2
from lightningd_py.pluginhost import create_plugin_manager
from lightningd_py.simnet.control import AsyncSimnetControl
from lightningd_py.supervisor import Supervisor


class NoopPlugin:
    """Counts settlements; does nothing else.

    The window is the drain's: from when the daemon read the first settlement off the
    stream (the event's ``time``) until the plugin has the last one. Timed from the
    plugin's first delivery instead, a plugin that starts late and then takes the
    journal in large runs would look faster than the stream."""

    def __init__(self) -> None:
        self.seen = 0
        self.reset(0)

    def reset(self, after_settle_index: int) -> None:
        """Count settlements after ``after_settle_index`` only (not the node's history)."""
        self.after = after_settle_index
        self.settled = 0
        self.first = float("inf")
        self.last = 0.0

    @hookimpl
    def ldp_invoice_event(self, event: object) -> None:
        if isinstance(event, InvoiceSettled):
            self.seen += 1
            if event.settle_index > self.after:
                self.settled += 1
                self.first = min(self.first, event.time)
                self.last = time.time()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def drain(config, control_url: str, count: int, htlcs: bool) -> float:
    """Settlements/s read off LND's streams with no processing.

    With ``htlcs`` the HTLC-event stream is read too: a settlement is then the four
    messages the daemon reads for it (invoice added and settled, HTLC settled and
    finally resolved); without, the invoice stream's two.
    """
    control = AsyncSimnetControl(control_url, timeout=300)
    node = NodeStatus()
    link = LndLink(config.lnd, node)
    done = anyio.Event()
    seen = {"n": 0, "htlc": 0, "first": 0.0, "last": 0.0}
    subscribed = anyio.Event()

    async def invoices(stubs: Stubs) -> None:
        call = stubs.lightning.SubscribeInvoices(ln.InvoiceSubscription())
        async for msg in call:
            if msg.state == ln.Invoice.SETTLED:
                now = time.perf_counter()
                if not seen["n"]:
                    seen["first"] = now
                seen["n"] += 1
                seen["last"] = max(seen["last"], now)
                if seen["n"] >= count:
                    call.cancel()
                    break

    async def htlc_events(stubs: Stubs) -> None:
        call = stubs.router.SubscribeHtlcEvents(router_pb2.SubscribeHtlcEventsRequest())
        async for msg in call:
            if msg.HasField("subscribed_event"):
                subscribed.set()
            elif msg.HasField("settle_event") or msg.HasField("final_htlc_event"):
                seen["htlc"] += 1
                seen["last"] = max(seen["last"], time.perf_counter())
                if seen["htlc"] >= 2 * count:
                    call.cancel()
                    break

    async def on_active(stubs: Stubs) -> None:
        async with anyio.create_task_group() as tg:
            if htlcs:
                tg.start_soon(htlc_events, stubs)
                await subscribed.wait()
            tg.start_soon(invoices, stubs)
            # The invoice stream is open once its first read is under way.
            await anyio.sleep(0.2)
            tg.start_soon(control.burst_settle, count)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run, on_active)
        await done.wait()
        tg.cancel_scope.cancel()
    await control.close()
    return count / max(seen["last"] - seen["first"], 1e-9)


async def pipeline(config, control_url: str, count: int) -> float:
    """Settlements/s through reader, journal and worker to a no-op plugin."""
    control = AsyncSimnetControl(control_url, timeout=300)
    noop = NoopPlugin()
    pm = create_plugin_manager(entry_points=[], extra={"noop": noop})
    supervisor = Supervisor(config, pm)
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await wait_async(lambda: supervisor.node.extra.get("streams_ready"), 30)
        # The first sync's settlements reach the plugin before the burst starts.
        history = (await control.state())["settled_invoices"]
        await wait_async(lambda: noop.seen >= history, 120)
        noop.reset(history)
        await control.burst_settle(count)
        await wait_async(lambda: noop.settled >= count, 120)
        tg.cancel_scope.cancel()
    await control.close()
    return count / max(noop.last - noop.first, 1e-9)


async def in_process(config, control_url: str, count: int) -> tuple[float, float, float]:
    """The drain of the invoice stream, of the invoice and HTLC-event streams, and the
    pipeline, one after another on one event loop (gRPC's poller stays on its loop)."""
    invoices_rate = await drain(config, control_url, count, False)
    drain_rate = await drain(config, control_url, count, True)
    return invoices_rate, drain_rate, await pipeline(config, control_url, count)


async def wait_async(predicate, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def journal_top(state_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{state_dir / 'lightningd-py.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT COALESCE(MAX(id), 0) FROM journal").fetchone()[0]
    finally:
        conn.close()


def plugins_caught_up(state_dir: Path, plugins: list[str]) -> bool:
    conn = sqlite3.connect(f"file:{state_dir / 'lightningd-py.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM journal").fetchone()[0]
        cursors = dict(conn.execute("SELECT plugin, position FROM journal_cursors").fetchall())
    finally:
        conn.close()
    return top > 0 and all(cursors.get(p, 0) >= top for p in plugins)


def settle_position(state_dir: Path) -> int:
    """The daemon's ``invoices.settle_index``: every settlement up to it is journaled."""
    conn = sqlite3.connect(f"file:{state_dir / 'lightningd-py.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        query = "SELECT value FROM journal_positions WHERE name = 'invoices.settle_index'"
        row = conn.execute(query).fetchone()
    finally:
        conn.close()
    return int(row[0]) if row else 0


def caught_up(state_dir: Path, plugins: list[str], settle_index: int) -> bool:
    """The daemon journaled every settlement up to ``settle_index`` and every plugin's
    cursor has passed the journal's end. Plugins level with the journal alone prove
    nothing: the daemon may not have read (nor simnet sent) the rest yet."""
    return settle_position(state_dir) >= settle_index and plugins_caught_up(state_dir, plugins)


def full_config(simnet: SimnetProcess, state_dir: Path, path: Path) -> Path:
    """A config with every built-in plugin on (API and metrics on free ports)."""
    data = daemon_config(
        simnet,
        state_dir,
        api_listen=f"127.0.0.1:{free_port()}",
        metrics_listen=f"127.0.0.1:{free_port()}",
        token_hashes={},
        core={"log_level": "warning"},
    )
    return write_config(path, data)


def settled_count(state_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{state_dir / 'lightningd-py.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        query = "SELECT COUNT(*) FROM invoice_tracker_invoices WHERE status = 'paid'"
        return conn.execute(query).fetchone()[0]
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settlements", type=int, default=20_000, help="settlements per rate measurement")
    parser.add_argument("--events", type=int, default=1_000_000, help="events for the memory measurement")
    parser.add_argument(
        "--catch-up",
        type=int,
        default=100_000,
        help="settlements missed while stopped, for the catch-up time",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ldp-bench-"))
    simnet = SimnetProcess(root / "simnet").start()
    try:
        # --- in-process: baseline and pipeline with a no-op plugin
        config_path = write_config(
            root / "noop.toml",
            {
                "core": {"state_dir": str(root / "noop-state"), "log_format": "json", "log_level": "warning"},
                "lnd": {
                    "host": simnet.grpc,
                    "tls_cert": str(simnet.tls_cert),
                    "macaroon": str(simnet.admin_macaroon),
                },
            },
        )
        config = load_config(config_path, {"noop": None})
        from lightningd_py.logs import configure_logging

        configure_logging("json", "warning")
        n = args.settlements

        # --- a real daemon process with every built-in plugin, on a node with no history yet
        fresh_state = root / "fresh-state"
        fresh_path = full_config(simnet, fresh_state, root / "fresh.toml")
        daemon = DaemonProcess(fresh_path, log_path=root / "fresh.log")
        daemon.start(timeout=30)
        builtins = ["invoice_tracker", "webhooks", "metrics", "rebalancer"]
        wait_for(lambda: caught_up(fresh_state, builtins, 0) or None, 60, 0.1)
        time.sleep(2)
        fresh_idle = rss_mb(daemon.pid)
        daemon.close()

        invoices_rate, drain_rate, pipe_rate = anyio.run(
            in_process, config, simnet.control_url, n, backend="asyncio"
        )
        print(
            f"raw stream drain:            {drain_rate:>10,.0f} settlements/s ({n:,} settlements; "
            "invoice and HTLC-event streams, the 4 messages the daemon reads per settlement)"
        )
        print(
            f"raw stream drain:            {invoices_rate:>10,.0f} settlements/s "
            "(invoice stream only, 2 messages per settlement)"
        )
        print(f"stream -> journal -> plugin: {pipe_rate:>10,.0f} settlements/s (no-op plugin)")
        print(
            f"ratio pipeline/drain:        {pipe_rate / drain_rate:>10.2f}   "
            f"(goal >= 0.50; rate goal >= 10,000/s; against the invoice stream only: "
            f"{pipe_rate / invoices_rate:.2f})"
        )

        # --- a real daemon process with every built-in plugin
        state = root / "full-state"
        full_path = full_config(simnet, state, root / "full.toml")
        ready_times = []
        for i in range(5):
            daemon = DaemonProcess(full_path, log_path=root / "daemon.log")
            t0 = time.perf_counter()
            daemon.start(timeout=30)
            ready_times.append(time.perf_counter() - t0)
            if i < 4:
                daemon.close()
        print(
            f"start to READY=1:            {statistics.median(ready_times) * 1000:>10,.0f} ms "
            f"(median of 5; min {min(ready_times) * 1000:,.0f} ms; goal < 1,500 ms)"
        )
        history = simnet.control.state()["settled_invoices"]
        wait_for(lambda: caught_up(state, builtins, history) or None, 60, 0.1)
        time.sleep(2)
        idle = rss_mb(daemon.pid)
        print(f"resident memory idle:        {fresh_idle:>10.1f} MB (node without history; goal < 80 MB)")
        print(
            f"resident memory idle:        {idle:>10.1f} MB "
            f"(after the first sync of the node's {2 * n:,} invoices; goal < 80 MB)"
        )

        # Timed like the drain: from the burst's first event in the journal (simnet
        # creating the invoices is not the daemon's time) until every plugin is past it.
        before = journal_top(state)
        answers: list[dict] = []
        burst = threading.Thread(target=lambda: answers.append(simnet.control.burst_settle(n)))
        burst.start()
        wait_for(lambda: journal_top(state) > before or None, 300, 0.002)
        t0 = time.perf_counter()
        burst.join()
        last = answers[0]["last_settle_index"]
        wait_for(lambda: caught_up(state, builtins, last) or None, 300, 0.05)
        full_rate = n / (time.perf_counter() - t0)
        print(
            f"all built-in plugins:        {full_rate:>10,.0f} settlements/s "
            f"(burst of {n:,}, from its first journaled event until every plugin's cursor passed it)"
        )

        # Each burst invoice is two events (created, settled).
        remaining = max(0, args.events - 2 * n)
        chunk = 50_000
        while remaining > 0:
            size = min(chunk, remaining // 2 or 1)
            simnet.control.burst_settle(size)
            remaining -= 2 * size
        last = simnet.control.state()["settled_invoices"]
        wait_for(lambda: caught_up(state, builtins, last) or None, 1800, 0.2)
        time.sleep(2)
        after = rss_mb(daemon.pid)
        print(
            f"resident memory after {args.events:,} events: {after:.1f} MB "
            f"(growth {100 * (after - idle) / idle:+.1f} %; goal < 10 %)"
        )

        # Settlements the daemon missed while it was stopped: LND replays them on the
        # resumed invoice stream; timed from the start until every plugin has them.
        daemon.close()
        settled_before = settled_count(state)
        simnet.control.burst_settle(args.catch_up)
        daemon = DaemonProcess(full_path, log_path=root / "daemon.log")
        t0 = time.perf_counter()
        daemon.start(timeout=30)
        wait_for(
            lambda: (
                (
                    settled_count(state) >= settled_before + args.catch_up
                    and plugins_caught_up(state, builtins)
                )
                or None
            ),
            600,
            0.1,
        )
        print(
            f"catch-up after a stop:       {time.perf_counter() - t0:>10.1f} s "
            f"({args.catch_up:,} missed settlements, from start until every plugin had them; goal < 15 s)"
        )
        daemon.close()
    finally:
        simnet.stop()
        # Its databases hold a million events and more: gigabytes, on every run.
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
