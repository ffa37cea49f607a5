"""HTTP API benchmark: invoice creation and invoice lookup at 50 concurrent clients.

Starts simnet and ``lightningd-py run`` (every built-in plugin on, rate limits off for
the bench token), then drives the API from this process with a small keep-alive
HTTP/1.1 client (one connection per client, so the load generator costs little CPU):

* closed loop: each client sends its next request as soon as the previous answer
  arrived; this measures the most requests per second the API sustains;
* open loop: the clients together send at a fixed rate (the goal: 1,000 creations/s,
  3,000 lookups/s), and latency is measured from when each request was due, so a
  stalled server cannot hide its queueing delay.

Goals (DESIGN.md): creation >= 1,000 req/s with p99 < 10 ms; lookup >= 3,000 req/s.

    python bench/api.py [--duration 10] [--clients 50] [--create-rate 1000] [--lookup-rate 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lightningd_py.cli import new_token, token_sha256
from lightningd_py.demo import DaemonProcess, SimnetProcess, daemon_config, free_port, write_config

__all__ = ["main"]


@dataclass
class Result:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)

    def line(self) -> str:
        ok = len(self.latencies)
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        errors = "" if not self.errors else f"  errors {dict(sorted(self.errors.items()))}"
        return (
            f"{self.name:<34} {ok / self.seconds:>9,.0f} req/s   p50 {pct(0.50):6.2f} ms   "
            f"p99 {pct(0.99):6.2f} ms   max {lat[-1] * 1000 if lat else float('nan'):7.2f} ms   "
            f"n={ok}{errors}"
        )


class Connection:
    """One keep-alive HTTP/1.1 connection that reads Content-Length framed answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        i = head.lower().find(b"content-length:")
        length = int(head[i + 15 : head.index(b"\r\n", i)]) if i >= 0 else 0
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def post(path: str, token: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get(path: str, token: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode()


async def closed_loop(
    conns: list[Connection], make: Callable[[int], bytes], seconds: float, name: str, sink: list[bytes] | None
) -> Result:
    result = Result(name, seconds)
    end = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client(conn: Connection) -> None:
        while time.perf_counter() < end:
            raw = make(next(counter))
            t0 = time.perf_counter()
            status, body = await conn.request(raw)
            if status >= 300:
                result.errors[status] = result.errors.get(status, 0) + 1
                continue
            result.latencies.append(time.perf_counter() - t0)
            if sink is not None:
                sink.append(body)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    result.seconds = time.perf_counter() - started
    return result


async def open_loop(
    conns: list[Connection], make: Callable[[int], bytes], rate: float, seconds: float, name: str
) -> Result:
    result = Result(f"{name} @ {rate:,.0f}/s offered", seconds)
    per_client = rate / len(conns)
    start = time.perf_counter() + 0.05
    counter = iter(range(10**9))

    async def client(k: int, conn: Connection) -> None:
        interval = 1.0 / per_client
        due = start + interval * k / len(conns)
        end = start + seconds
        while due < end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status, _ = await conn.request(make(next(counter)))
            if status >= 300:
                result.errors[status] = result.errors.get(status, 0) + 1
            else:
                result.latencies.append(time.perf_counter() - due)
            due += interval

    await asyncio.gather(*(client(k, c) for k, c in enumerate(conns)))
    # Answers that came late stretch the phase: the achieved rate counts that.
    result.seconds = max(seconds, time.perf_counter() - start)
    return result


async def settle(conn: Connection, limit_seconds: float = 60.0) -> None:
    """Wait until the plugins have worked off the events the last phase caused (their
    journal lag stops shrinking), so one phase's backlog does not slow the next."""
    deadline = time.perf_counter() + limit_seconds
    last, still = -1, 0
    while time.perf_counter() < deadline:
        status, body = await conn.request(b"GET /v1/health HTTP/1.1\r\nHost: bench\r\n\r\n")
        lag = sum(p["lag"] for p in json.loads(body)["plugins"].values()) if status == 200 else -1
        if lag == 0:
            return
        still = still + 1 if lag == last else 0
        if still >= 10:
            return
        last = lag
        await asyncio.sleep(0.1)


async def run_bench(api: str, token: str, args: argparse.Namespace) -> list[str]:
    host, port = api.rsplit(":", 1)
    conns = [Connection(host, int(port)) for _ in range(args.clients)]
    for c in conns:
        await c.open()

    def create(i: int) -> bytes:
        body = json.dumps({"amount_sat": 1000 + i % 1000, "memo": f"bench {i}", "metadata": {"order": i}})
        return post("/v1/invoices", token, body.encode())

    lines = []
    await closed_loop(conns, create, 2.0, "warm-up", None)
    bodies: list[bytes] = []
    res = await closed_loop(conns, create, args.duration, "create invoice (closed loop)", bodies)
    lines.append(res.line())
    hashes = [json.loads(b)["payment_hash"] for b in bodies[:20000]]
    random.shuffle(hashes)

    def lookup(i: int) -> bytes:
        return get(f"/v1/invoices/{hashes[i % len(hashes)]}", token)

    await settle(conns[0])
    res = await closed_loop(conns, lookup, args.duration, "lookup invoice (closed loop)", None)
    lines.append(res.line())
    res = await open_loop(conns, lookup, args.lookup_rate, args.duration, "lookup invoice")
    lines.append(res.line())
    await settle(conns[0])
    res = await open_loop(conns, create, args.create_rate, args.duration, "create invoice")
    lines.append(res.line())
    for c in conns:
        c.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--create-rate", type=float, default=1000.0)
    parser.add_argument("--lookup-rate", type=float, default=3000.0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ldp-bench-") as tmp:
        root = Path(tmp)
        simnet = SimnetProcess(root / "simnet").start()
        daemon: DaemonProcess | None = None
        try:
            token = new_token()
            api = f"127.0.0.1:{free_port()}"
            data = daemon_config(
                simnet,
                root / "state",
                api_listen=api,
                metrics_listen=f"127.0.0.1:{free_port()}",
                token_hashes={"invoice": token_sha256(token)},
                core={"log_level": "warning"},
                plugins={"http_api": {"rate_limits": {"general": "0", "public": "0"}}},
            )
            path = write_config(root / "config.toml", data)
            daemon = DaemonProcess(path, log_path=root / "daemon.log", state_dir=root / "state")
            daemon.start(timeout=30)
            print(
                f"lightningd-py API bench: {args.clients} clients, {args.duration:g} s per phase, "
                f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]} (daemon, simnet and this client "
                "share the machine)"
            )
            for line in asyncio.run(run_bench(api, token, args)):
                print(line, flush=True)
            print("goals: create >= 1,000 req/s with p99 < 10 ms; lookup >= 3,000 req/s")
        finally:
            if daemon is not None:
                daemon.close()
            simnet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
