"""Webhook delivery benchmark: deliveries per second to a local receiver, and
settle-to-delivery latency.

Runs the real daemon (``Supervisor``, every plugin it loads, the webhooks plugin with
one endpoint) in this process, and an HTTP receiver in a child process that answers
204 and records when each delivery arrived. Settlements enter the daemon where the LND
invoice stream reader puts them, the journal, stamped with the time they were observed;
from there they take the daemon's whole path: the plugin's journal worker, the outbox
commit, a signed POST over a keep-alive connection, and the outcome's commit.

* throughput: a burst of settlements, journaled in batches as fast as the reader would
  journal a replay; deliveries/s from the first append to the last arrival;
* latency: settlements at a steady rate; for each, arrival time minus observation time.

Goals (DESIGN.md): >= 1,000 deliveries/s, settle-to-delivery p50 < 10 ms.

    python bench/webhooks.py [--burst 5000] [--rate 200] [--steady 2000] [--concurrency 16]
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
from pathlib import Path
from typing import Any

import anyio
import tomli_w

__all__ = ["main"]


# ---------------------------------------------------------------- receiver (child process)


def run_receiver(port: int) -> None:
    """Answer every POST with 204 and remember (arrival time, body) until asked."""
    from aiohttp import web

    arrivals: list[tuple[float, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrivals.append((time.time(), body))
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        # Parsing happens here, after the run, so the receiver stays cheap while measured.
        out = []
        for at, body in arrivals:
            doc = json.loads(body)
            observed = datetime.fromisoformat(doc["timestamp"]).timestamp()
            out.append([at, observed, doc["data"]["payment_hash"]])
        arrivals.clear()
        return web.json_response(out)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------- the daemon in this process


def write_config(root: Path, receiver_url: str, concurrency: int) -> Path:
    from lightningd_py.plugins.webhooks.signing import generate_secret

    cert = root / "tls.cert"
    cert.write_text("LND is not used by this benchmark\n")
    doc: dict[str, Any] = {
        "core": {"state_dir": str(root / "state"), "log_level": "error", "log_format": "json"},
        # Nothing listens there: the daemon keeps reconnecting in the background, as it
        # does while LND is down; settlements are journaled by the benchmark instead.
        "lnd": {"host": "127.0.0.1:9", "tls_cert": str(cert), "macaroon": "00" * 32, "reconnect_max": 60},
        "plugins": {
            "http_api": {"enabled": False},
            "metrics": {"enabled": False},
            "webhooks": {
                "endpoints": [
                    {
                        "name": "bench",
                        "url": receiver_url,
                        "secret": generate_secret(),
                        "events": ["payment.confirmed"],
                        "concurrency": concurrency,
                    }
                ]
            },
        },
    }
    path = root / "config.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


async def fetch_stats(url: str) -> list[list[Any]]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json()


async def bench(args: argparse.Namespace, root: Path, port: int) -> None:
    from lightningd_py.events import InvoiceSettled
    from lightningd_py.logs import configure_logging
    from lightningd_py.supervisor import Supervisor, load

    receiver = f"http://127.0.0.1:{port}"
    pm, config = load(write_config(root, receiver + "/hook", args.concurrency))
    configure_logging(config.core.log_format, config.core.log_level)
    supervisor = Supervisor(config, pm)

    def settlement(i: int, tag: str) -> InvoiceSettled:
        return InvoiceSettled(
            payment_hash=f"{tag}{i:060x}", value_msat=1000, amt_paid_msat=1000, settle_index=i
        )

    async def wait_arrivals(count: int, within: float) -> list[list[Any]]:
        got: list[list[Any]] = []
        deadline = time.monotonic() + within
        while len(got) < count and time.monotonic() < deadline:
            await anyio.sleep(0.05)
            got += await fetch_stats(receiver + "/stats")
        return got

    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        # The supervisor marks readiness with a timestamp, not an event.
        while supervisor.ready_at is None:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        journal = supervisor.journal
        assert journal is not None

        # Warm-up: connections, caches.
        await journal.append([settlement(i, "ffff") for i in range(200)])
        await wait_arrivals(200, 30)

        # Throughput: a burst, journaled in batches of 500 (a replay after downtime).
        started = time.time()
        for offset in range(0, args.burst, 500):
            await journal.append(
                [settlement(i, "aaaa") for i in range(offset, min(args.burst, offset + 500))]
            )
        got = await wait_arrivals(args.burst, 120)
        last = max(at for at, _, _ in got) if got else float("nan")
        rate = len(got) / (last - started) if got else 0.0
        print(
            f"throughput: {len(got):,} deliveries in {last - started:.2f} s = {rate:,.0f} deliveries/s "
            f"(burst of {args.burst:,}, concurrency {args.concurrency})"
        )

        # Latency: a steady stream of settlements, one at a time as the live stream delivers them.
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        for i in range(args.steady):
            await journal.append([settlement(i, "bbbb")])
            next_at += interval
            await anyio.sleep(max(0.0, next_at - time.monotonic()))
        got = await wait_arrivals(args.steady, 60)
        latencies = [(at - observed) * 1000 for at, observed, _ in got]
        print(
            f"settle-to-delivery at {args.rate}/s: p50 {pct(latencies, 0.50):.2f} ms   "
            f"p99 {pct(latencies, 0.99):.2f} ms   max {max(latencies, default=float('nan')):.2f} ms   "
            f"n={len(latencies):,}"
        )
        tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=5000, help="settlements in the throughput burst")
    parser.add_argument("--rate", type=float, default=200, help="settlements per second in the latency run")
    parser.add_argument("--steady", type=int, default=2000, help="settlements in the latency run")
    parser.add_argument("--concurrency", type=int, default=16, help="the endpoint's concurrency")
    parser.add_argument("--receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        run_receiver(args.receiver)
        return

    from lightningd_py.demo import free_port

    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--receiver", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the receiver did not start")
        time.sleep(0.2)
        print(
            f"webhooks bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]} "
            f"(daemon and receiver share them); started {datetime.now().isoformat(timespec='seconds')}"
        )
        with tempfile.TemporaryDirectory(prefix="ldp-bench-webhooks-") as tmp:
            asyncio.run(bench(args, Path(tmp), port))
    finally:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    main()
