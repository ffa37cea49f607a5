"""Webhook delivery benchmark: deliveries per second to a local receiver, and
settle-to-delivery latency.

Starts simnet and ``lightningd-py run`` (every built-in plugin on; the webhooks plugin
with one endpoint subscribed to ``payment.confirmed``) and an HTTP receiver in a child
process that answers 204 and records when each delivery arrived. Payments are made on
simnet, so each one takes the daemon's whole path: LND's invoice stream, the journal,
the webhooks plugin's outbox commit, a signed POST over a keep-alive connection, and the
outcome's commit.

* throughput: simnet settles a burst of invoices at once (``burst_settle``);
  deliveries/s from the request for the burst to the last arrival;
* latency: invoices settled one at a time at a steady rate; for each, the arrival
  time minus the time the settle request was sent to simnet.

Goals (DESIGN.md): >= 1,000 deliveries/s, settle-to-delivery p50 < 10 ms.

    python bench/webhooks.py [--burst 5000] [--rate 100] [--steady 1000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp

from lightningd_py.demo import DaemonProcess, SimnetProcess, daemon_config, free_port, write_config
from lightningd_py.simnet.control import AsyncSimnetControl

__all__ = ["main"]


# ---------------------------------------------------------------- receiver (child process)


def run_receiver(port: int) -> None:
    """Answer every POST with 204 and remember (arrival time, body) until asked; after
    ``POST /refuse {"until": unix}`` answer 503 with that time as Retry-After instead."""
    from aiohttp import web

    arrivals: list[tuple[float, bytes]] = []
    refusals = [0]
    refuse_until = [0.0]

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if time.time() < refuse_until[0]:
            refusals[0] += 1
            return web.Response(status=503, headers={"Retry-After": formatdate(refuse_until[0], usegmt=True)})
        arrivals.append((time.time(), body))
        return web.Response(status=204)

    async def refuse(request: web.Request) -> web.Response:
        refuse_until[0] = float((await request.json())["until"])
        refusals[0] = 0
        return web.json_response({})

    async def refused(request: web.Request) -> web.Response:
        return web.json_response({"refused": refusals[0]})

    async def stats(request: web.Request) -> web.Response:
        # Parsing happens here, between phases, so the receiver stays cheap while measured.
        out = []
        for at, body in arrivals:
            doc = json.loads(body)
            observed = datetime.fromisoformat(doc["timestamp"]).timestamp()
            out.append([at, doc["data"]["payment_hash"], observed])
        arrivals.clear()
        return web.json_response(out)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/refuse", refuse)
    app.router.add_get("/refused", refused)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------- the measurement


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


async def arrivals(
    session: aiohttp.ClientSession, url: str, count: int, within: float
) -> dict[str, tuple[float, float]]:
    """Payment hash -> (arrival time, time the daemon observed the settlement), once
    ``count`` deliveries arrived (or time is up)."""
    got: dict[str, tuple[float, float]] = {}
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        async with session.get(url) as response:
            for at, payment_hash, observed in await response.json():
                got.setdefault(payment_hash, (at, observed))
    return got


async def idle(session: aiohttp.ClientSession, metrics_url: str) -> None:
    """Wait until every plugin has handled every journaled event, so that one phase's
    backlog in other plugins does not weigh on the next phase."""
    deadline = time.monotonic() + 120
    lags: list[str] = []
    while time.monotonic() < deadline:
        async with session.get(metrics_url) as response:
            text = await response.text()
        lags = [line for line in text.splitlines() if line.startswith("lightningd_plugin_cursor_lag_events{")]
        if lags and all(line.rsplit(" ", 1)[1] in ("0", "0.0") for line in lags):
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"the daemon's plugins did not catch up within 120 s: {lags}")


async def run_bench(control_url: str, receiver: str, metrics_url: str, args: argparse.Namespace) -> list[str]:
    lines = []
    async with AsyncSimnetControl(control_url) as ctl, aiohttp.ClientSession() as session:
        stats = receiver + "/stats"
        # Warm-up: the daemon's connections to LND and to the receiver.
        await ctl.burst_settle(200, memo="warm-up")
        await arrivals(session, stats, 200, 30)
        await idle(session, metrics_url)

        started = time.time()
        answer = await ctl.burst_settle(args.burst, memo="burst")
        got = await arrivals(session, stats, args.burst, 120)
        last = max((at for at, _ in got.values()), default=float("nan"))
        observed = max((seen for _, seen in got.values()), default=float("nan"))
        lines.append(
            f"throughput: {len(got):,} deliveries in {last - started:.2f} s = "
            f"{len(got) / (last - started):,.0f} deliveries/s (burst of {args.burst:,} settled by simnet "
            f"at {answer['settle_rate']:,}/s; endpoint concurrency {args.concurrency})"
        )
        lines.append(
            f"  the daemon's stream reader observed the last settlement after {observed - started:.2f} s "
            f"({len(got) / (observed - started):,.0f}/s); the last delivery came "
            f"{1000 * (last - observed):.0f} ms later"
        )
        await idle(session, metrics_url)

        # The delivery stage alone: a backlog that falls due at one instant. The receiver
        # refuses the first attempts with a Retry-After date; once every plugin is idle,
        # that date arrives and the daemon has nothing to do but deliver.
        until = int(time.time()) + 20
        async with session.post(receiver + "/refuse", json={"until": until}):
            pass
        await ctl.burst_settle(args.burst, memo="backlog")
        while True:
            async with session.get(receiver + "/refused") as response:
                if (await response.json())["refused"] >= args.burst:
                    break
            await asyncio.sleep(0.1)
        await idle(session, metrics_url)
        if time.time() >= until:
            raise SystemExit("the backlog was not in place before it fell due; use a smaller --burst")
        got = await arrivals(session, stats, args.burst, 180)
        last = max(at for at, _ in got.values())
        lines.append(
            f"backlog: {len(got):,} deliveries due at once, delivered in {last - until:.2f} s = "
            f"{len(got) / (last - until):,.0f} deliveries/s (from the due time to the last arrival)"
        )
        await idle(session, metrics_url)

        hashes = [
            (await ctl.add_invoice(value_msat=1000, memo=f"steady {i}"))["payment_hash"]
            for i in range(args.steady)
        ]
        sent: dict[str, float] = {}
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        for payment_hash in hashes:
            sent[payment_hash] = time.time()
            await ctl.settle_invoice(payment_hash)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        got = await arrivals(session, stats, args.steady, 60)
        total = [(got[h][0] - sent[h]) * 1000 for h in hashes if h in got]
        # Where the time goes: from the settle to the daemon's stream reader observing it
        # (simnet's control call and LND's invoice stream), and from there to the receiver.
        to_reader = [(got[h][1] - sent[h]) * 1000 for h in hashes if h in got]
        in_daemon = [(got[h][0] - got[h][1]) * 1000 for h in hashes if h in got]
        lines.append(
            f"settle-to-delivery at {args.rate:g} settlements/s: p50 {pct(total, 0.50):.2f} ms   "
            f"p99 {pct(total, 0.99):.2f} ms   max {max(total, default=float('nan')):.2f} ms   "
            f"n={len(total):,} of {args.steady:,}"
        )
        lines.append(
            f"  of which settle -> observed by the daemon: p50 {pct(to_reader, 0.5):.2f} ms p99 "
            f"{pct(to_reader, 0.99):.2f} ms; observed -> delivered: p50 {pct(in_daemon, 0.5):.2f} ms p99 "
            f"{pct(in_daemon, 0.99):.2f} ms"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--burst", type=int, default=5000, help="settlements in the throughput burst")
    parser.add_argument("--rate", type=float, default=100, help="settlements per second in the latency run")
    parser.add_argument("--steady", type=int, default=1000, help="settlements in the latency run")
    parser.add_argument("--concurrency", type=int, default=16, help="the endpoint's concurrency")
    parser.add_argument("--receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        run_receiver(args.receiver)
        return 0

    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise SystemExit("the receiver did not start")
        print(
            f"lightningd-py webhooks bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]} "
            "(daemon, simnet, receiver and this driver share the machine)"
        )
        for label, others in (("every built-in plugin on", True), ("webhooks the only plugin", False)):
            print(f"-- {label}")
            for line in run_daemon(port, args, others):
                print(line, flush=True)
        print("goals: >= 1,000 deliveries/s; settle-to-delivery p50 < 10 ms")
    finally:
        receiver.terminate()
        receiver.wait()
    return 0


def run_daemon(port: int, args: argparse.Namespace, others: bool) -> list[str]:
    """One fresh simnet and daemon; ``others`` turns the other built-in plugins on."""
    from lightningd_py.plugins.webhooks.signing import generate_secret

    with tempfile.TemporaryDirectory(prefix="ldp-bench-webhooks-") as tmp:
        root = Path(tmp)
        simnet = SimnetProcess(root / "simnet").start()
        daemon: DaemonProcess | None = None
        try:
            endpoint = {
                "name": "bench",
                "url": f"http://127.0.0.1:{port}/hook",
                "secret": generate_secret(),
                "events": ["payment.confirmed"],
                "concurrency": args.concurrency,
            }
            metrics = f"127.0.0.1:{free_port()}"
            plugins: dict[str, Any] = {"webhooks": {"endpoints": [endpoint]}}
            if not others:
                plugins.update(
                    {name: {"enabled": False} for name in ("http_api", "invoice_tracker", "rebalancer")}
                )
                # The metrics plugin stays: the bench reads the plugins' lag from it.
            data = daemon_config(
                simnet,
                root / "state",
                api_listen=f"127.0.0.1:{free_port()}",
                metrics_listen=metrics,
                token_hashes={},
                core={"log_level": "warning"},
                plugins=plugins,
            )
            path = write_config(root / "config.toml", data)
            # LDP_BENCH_LAUNCHER, e.g. "python -m cProfile -o /tmp/daemon.prof -m lightningd_py.cli",
            # runs the daemon under a profiler.
            launcher = os.environ.get("LDP_BENCH_LAUNCHER", "").split() or None
            daemon = DaemonProcess(
                path, log_path=root / "daemon.log", state_dir=root / "state", launcher=launcher
            )
            daemon.start(timeout=30)
            return asyncio.run(
                run_bench(simnet.control_url, f"http://127.0.0.1:{port}", f"http://{metrics}/metrics", args)
            )
        finally:
            if daemon is not None:
                daemon.close()
            simnet.stop()


if __name__ == "__main__":
    sys.exit(main())
