"""Event-path benchmark: LND stream -> journal -> plugin.

Prints, for one run on this machine:

1. the raw drain rate: settlements per second this process reads off simnet's
   SubscribeInvoices stream and throws away (the baseline);
2. the pipeline rate: settlements per second from the same stream through the
   daemon's reader, the journal (sqlite, batched) and a worker to a no-op plugin, in the
   same process, and its ratio to the baseline (goal >= 10,000/s and >= 0.5);
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
from lightningd_py.pluginhost import create_plugin_manager
from lightningd_py.simnet.control import AsyncSimnetControl
from lightningd_py.supervisor import Supervisor


class NoopPlugin:
    """Counts settlements; does nothing else."""

    def __init__(self) -> None:
        self.settled = 0
        self.first = 0.0
        self.last = 0.0

    @hookimpl
    def ldp_invoice_event(self, event: object) -> None:
        if isinstance(event, InvoiceSettled):
            now = time.perf_counter()
            if not self.settled:
                self.first = now
            self.settled += 1
            self.last = now


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def drain(config, control_url: str, count: int) -> float:
    """Settlements/s read off the stream with no processing."""
    control = AsyncSimnetControl(control_url, timeout=300)
    node = NodeStatus()
    link = LndLink(config.lnd, node)
    done = anyio.Event()
    seen = {"n": 0, "first": 0.0, "last": 0.0}

    async def on_active(stubs: Stubs) -> None:
        call = stubs.lightning.SubscribeInvoices(ln.InvoiceSubscription())
        async with anyio.create_task_group() as tg:
            tg.start_soon(control.burst_settle, count)
            async for msg in call:
                if msg.state == ln.Invoice.SETTLED:
                    now = time.perf_counter()
                    if not seen["n"]:
                        seen["first"] = now
                    seen["n"] += 1
                    seen["last"] = now
                    if seen["n"] >= count:
                        call.cancel()
                        break
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
        noop.settled = 0
        await control.burst_settle(count)
        await wait_async(lambda: noop.settled >= count, 120)
        tg.cancel_scope.cancel()
    await control.close()
    return count / max(noop.last - noop.first, 1e-9)


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
        wait_for(lambda: plugins_caught_up(fresh_state, builtins) or None, 60, 0.1)
        time.sleep(2)
        fresh_idle = rss_mb(daemon.pid)
        daemon.close()

        drain_rate = anyio.run(drain, config, simnet.control_url, n, backend="asyncio")
        pipe_rate = anyio.run(pipeline, config, simnet.control_url, n, backend="asyncio")
        print(f"raw stream drain:            {drain_rate:>10,.0f} settlements/s ({n:,} settlements)")
        print(f"stream -> journal -> plugin: {pipe_rate:>10,.0f} settlements/s (no-op plugin)")
        print(
            f"ratio pipeline/drain:        {pipe_rate / drain_rate:>10.2f}   "
            "(goal >= 0.50; rate goal >= 10,000/s)"
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
        wait_for(lambda: plugins_caught_up(state, builtins) or None, 60, 0.1)
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
        burst = threading.Thread(target=simnet.control.burst_settle, args=(n,))
        burst.start()
        wait_for(lambda: journal_top(state) > before or None, 300, 0.002)
        t0 = time.perf_counter()
        burst.join()
        wait_for(lambda: plugins_caught_up(state, builtins) or None, 300, 0.05)
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
        wait_for(lambda: plugins_caught_up(state, builtins) or None, 1800, 0.2)
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
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
