"""Scrape time and size of the metrics endpoint, with many channels and after a burst
of settled invoices, plus the time of the analytics endpoints over that history.

Runs simnet (``--channels``) and ``lightningd-py run`` as real processes, scrapes
``/metrics`` over a kept-alive HTTP connection the way Prometheus does (plain and
gzip), then has simnet create and settle ``--invoices`` invoices at once, waits until
the metrics plugin has counted them all, and scrapes again.

    .venv/bin/python bench/scrape.py [--channels 500] [--invoices 100000] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lightningd_py.cli import TOKEN_ROLES, new_token, token_sha256
from lightningd_py.demo import DaemonProcess, SimnetProcess, daemon_config, free_port, wait_for, write_config
from lightningd_py.simnet.control import SimnetControl

TARGET_MS = 50.0


def scrape_once(conn: http.client.HTTPConnection, encoding: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    conn.request("GET", "/metrics", headers={"Accept-Encoding": encoding})
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200:
        raise RuntimeError(f"/metrics answered {resp.status}")
    return elapsed, body


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(host: str, port: int, count: int, pid: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        scrape_once(conn, "identity")  # warm-up
        cpu = cpu_seconds(pid)
        plain = [scrape_once(conn, "identity") for _ in range(count)]
        plain_cpu = cpu_seconds(pid) - cpu
        zipped = [scrape_once(conn, "gzip") for _ in range(count)]
        zipped_cpu = cpu_seconds(pid) - cpu - plain_cpu
    finally:
        conn.close()
    text = plain[-1][1]
    samples = sum(len(f.samples) for f in text_string_to_metric_families(text.decode()))
    return {
        "samples": samples,
        "bytes": len(text),
        "gzip_bytes": len(zipped[-1][1]),
        "plain_ms": _stats([t for t, _ in plain]),
        "gzip_ms": _stats([t for t, _ in zipped]),
        # The daemon's CPU time per scrape: what a scrape costs, whatever else runs.
        "plain_cpu_ms": round(plain_cpu * 1000 / count, 2),
        "gzip_cpu_ms": round(zipped_cpu * 1000 / count, 2),
    }


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "p50": round(statistics.median(ms), 2),
        "p95": round(ms[max(0, int(len(ms) * 0.95) - 1)], 2),
        "max": round(ms[-1], 2),
    }


def metric(url: str, name: str, **labels: str) -> float | None:
    """One sample's value (the sum over all label values when ``labels`` is ``{"*": ""}``)."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    found = None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and (s.labels == labels or "*" in labels):
                found = (found or 0) + s.value
    return found


def timed_get(url: str, token: str) -> tuple[float, int, int]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as resp:
        size = 0
        while chunk := resp.read(1 << 16):
            size += len(chunk)
        status = resp.status
    return (time.perf_counter() - started) * 1000, status, size


def report(title: str, result: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(f"  samples            {result['samples']}")
    print(f"  size               {result['bytes']:,} bytes ({result['gzip_bytes']:,} gzipped)")
    for kind in ("plain", "gzip"):
        s = result[f"{kind}_ms"]
        verdict = "ok" if s["p50"] < TARGET_MS else f"ABOVE {TARGET_MS:g} ms"
        spread = f"p50 {s['p50']:7.2f} ms   p95 {s['p95']:7.2f} ms   max {s['max']:7.2f} ms"
        cpu = result[f"{kind}_cpu_ms"]
        print(f"  scrape ({kind:5})     {spread}   daemon CPU {cpu:6.2f} ms/scrape   {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=500)
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the working directory (database, logs)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ldp-bench-scrape-"))
    simnet = SimnetProcess(
        work / "simnet", args=["--channels", str(args.channels), "--peers", str(args.peers)]
    )
    simnet.start()
    daemon: DaemonProcess | None = None
    try:
        tokens = {role: new_token() for role in TOKEN_ROLES}
        metrics_port, api_port = free_port(), free_port()
        data = daemon_config(
            simnet,
            work / "state",
            api_listen=f"127.0.0.1:{api_port}",
            metrics_listen=f"127.0.0.1:{metrics_port}",
            token_hashes={role: token_sha256(token) for role, token in tokens.items()},
            core={"log_level": "warning"},
            plugins={"metrics": {"refresh_interval": 1.0}},
        )
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        api = f"http://127.0.0.1:{api_port}"
        daemon = DaemonProcess(
            write_config(work / "config.toml", data),
            log_path=work / "daemon.log",
            metrics_url=url,
            api_url=api,
            tokens=tokens,
            state_dir=work / "state",
        )
        daemon.start(timeout=60)
        pid = daemon.pid
        if pid is None:
            raise RuntimeError("the daemon did not start")

        def all_channels() -> bool:
            active = metric(url, "lightningd_node_channels", state="active") or 0
            inactive = metric(url, "lightningd_node_channels", state="inactive") or 0
            return active + inactive >= args.channels

        wait_for(all_channels, timeout=60, interval=0.2)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"lightningd-py metrics scrape benchmark: {args.channels} channels, {args.peers} peers; "
            f"{os.cpu_count()} CPUs, load average {load}"
        )
        report(
            f"{args.channels} channels, empty history",
            measure("127.0.0.1", metrics_port, args.scrapes, pid),
        )

        started = time.perf_counter()
        # A burst of 100,000 takes simnet longer than its control client's default timeout.
        burst = SimnetControl(simnet.control_url, timeout=600).burst_settle(args.invoices, value_msat=1000)
        wait_for(
            lambda: (
                metric(url, "lightningd_invoices_settled_total") == args.invoices
                and metric(url, "lightningd_plugin_cursor_lag_events", plugin="metrics") == 0
            ),
            timeout=900,
            interval=0.5,
        )
        caught_up = time.perf_counter() - started
        # Measure a daemon at rest: every plugin done with the burst, not only this one.
        wait_for(lambda: metric(url, "lightningd_plugin_cursor_lag_events", **{"*": ""}) == 0, 900, 0.5)
        print(
            f"\n{args.invoices:,} invoices created and settled by simnet in "
            f"{burst['create_seconds'] + burst['settle_seconds']:.2f} s; counted by the metrics plugin "
            f"{caught_up:.2f} s after the burst started"
        )
        report(
            f"{args.channels} channels, after {args.invoices:,} invoices",
            measure("127.0.0.1", metrics_port, args.scrapes, pid),
        )

        print(f"\nanalytics over {args.invoices:,} invoices (readonly token, one request each)")
        token = tokens["readonly"]
        for path in (
            "/v1/analytics/summary",
            "/v1/analytics/payments",
            "/v1/analytics/fees",
            "/v1/analytics/channels",
            "/v1/analytics/history?limit=100",
            "/v1/analytics/report?period=month",
            "/v1/analytics/export/csv",
            "/v1/analytics/export/json",
        ):
            ms, status, size = timed_get(api + path, token)
            print(f"  {path:40} {status}  {ms:9.1f} ms  {size:>12,} bytes")
    finally:
        if daemon is not None:
            daemon.close()
        simnet.stop()
        # A run leaves some 300 MB of database and logs behind.
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
