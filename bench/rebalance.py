"""The 100-channel rebalancing scenario: simnet and the daemon as processes, driven
through the daemon's HTTP API exactly as an operator would.

simnet gets 100 channels to 100 peers with known balances (35 depleted, 35 with
surplus, 30 within bounds). The fee policy is applied once (so each channel's own fee
rate reflects its balance, which is what the economic check weighs), then automatic
rounds run until no rebalance is left to do. Prints how many channels were brought into
bounds, the fees paid against the budget, and the time taken.

    .venv/bin/python bench/rebalance.py [--channels 100] [--parallel 4] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lightningd_py.cli import TOKEN_ROLES, new_token, token_sha256
from lightningd_py.demo import DaemonProcess, SimnetProcess, daemon_config, free_port, wait_for, write_config

__all__ = ["main"]

MIN_RATIO, MAX_RATIO = 0.2, 0.8


def _api(base: str, token: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{method} {path}: {exc.code} {exc.read().decode()}") from None


def _ratios(simnet: SimnetProcess) -> dict[int, float]:
    out = {}
    for c in simnet.control.state()["channel_list"]:
        if c["status"] == "open":
            out[int(c["chan_id"])] = c["local_msat"] / (c["local_msat"] + c["remote_msat"])
    return out


def _out_of_bounds(ratios: dict[int, float]) -> set[int]:
    return {k for k, r in ratios.items() if not MIN_RATIO <= r <= MAX_RATIO}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--budget-sat", type=int, default=100_000, help="daily fee budget")
    parser.add_argument("--max-fee-ppm", type=int, default=500)
    parser.add_argument("--max-rounds", type=int, default=10)
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="ldp-bench-rebalance-"))
    n = args.channels
    simnet = SimnetProcess(
        root / "simnet", args=["--channels", str(n), "--peers", str(n), "--seed", str(args.seed)]
    ).start()
    daemon: DaemonProcess | None = None
    try:
        rng = random.Random(args.seed)
        ids = sorted(_ratios(simnet))
        rng.shuffle(ids)
        depleted, surplus = ids[: n * 35 // 100], ids[n * 35 // 100 : n * 70 // 100]
        for chan_id in ids:
            if chan_id in depleted:
                ratio = rng.uniform(0.02, 0.15)
            elif chan_id in surplus:
                ratio = rng.uniform(0.85, 0.98)
            else:
                ratio = rng.uniform(0.3, 0.7)
            listed = simnet.control.state()["channel_list"]
            capacity = next(c["capacity_sat"] for c in listed if int(c["chan_id"]) == chan_id)
            simnet.control.set_balance(chan_id, int(capacity * ratio) * 1000)
        before = _ratios(simnet)

        tokens = {role: new_token() for role in TOKEN_ROLES}
        data = daemon_config(
            simnet,
            root / "state",
            api_listen=f"127.0.0.1:{free_port()}",
            metrics_listen=f"127.0.0.1:{free_port()}",
            token_hashes={role: token_sha256(t) for role, t in tokens.items()},
            core={"log_level": "warning"},
            plugins={
                "http_api": {"rate_limits": {"rebalance": "0", "general": "0"}},
                "rebalancer": {
                    "max_fee_ppm": args.max_fee_ppm,
                    "daily_budget_msat": args.budget_sat * 1000,
                    "parallel": args.parallel,
                    "max_rebalances_per_round": n,
                    "auto_min_interval": 0,
                    "fee_policy": {"min_ppm": 1, "max_ppm": 1000, "min_change_ppm": 0},
                },
            },
        )
        config = write_config(root / "config.toml", data)
        api_url = "http://" + data["plugins"]["http_api"]["listen"]
        daemon = DaemonProcess(
            config, log_path=root / "daemon.log", api_url=api_url, tokens=tokens, state_dir=root / "state"
        ).start(timeout=30)
        token = tokens["admin"]
        wait_for(lambda: _api(api_url, token, "GET", "/v1/health")["lnd"]["active"], timeout=30)

        fee_changes = _api(api_url, token, "POST", "/v1/rebalance/fee-policy/apply?dry_run=false")["changes"]
        started = time.perf_counter()
        rounds: list[dict[str, Any]] = []
        for _ in range(args.max_rounds):
            result = _api(api_url, token, "POST", "/v1/rebalance/auto")
            rounds.append(result)
            if not result["planned"] or result["budget_exhausted"]:
                break
            if not any(r["status"] == "succeeded" for r in result["results"]):
                break
        elapsed = time.perf_counter() - started
        after = _ratios(simnet)
        budget = _api(api_url, token, "GET", "/v1/rebalance/budget")

        results = [r for rnd in rounds for r in rnd["results"]]
        ok = [r for r in results if r["status"] == "succeeded"]
        failed = [r for r in results if r["status"] == "failed"]
        reasons: dict[str, int] = {}
        for r in failed:
            key = r["failure_reason"].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        moved = sum(r["moved_msat"] for r in ok)
        fees = sum(r["fee_msat"] for r in ok)
        out_before, out_after = _out_of_bounds(before), _out_of_bounds(after)
        print(f"channels: {n} (peers {n}); bounds {MIN_RATIO}..{MAX_RATIO}, target 0.5")
        print(f"fee policy applied to {len(fee_changes)} channels before the rounds")
        print(f"out of bounds before: {len(out_before)}   after: {len(out_after)}")
        print(f"brought into bounds: {len(out_before - out_after)} of {len(out_before)}")
        print(
            f"rebalances: {len(ok)} succeeded, {len(failed)} failed {reasons or ''} "
            f"in {len(rounds)} rounds ({args.parallel} at a time), "
            f"{sum(r['attempts'] for r in results)} payment attempts"
        )
        print(f"moved: {moved // 1000:,} sat")
        print(
            f"fees paid: {fees:,} msat ({fees / 1000:,.3f} sat, "
            f"{fees * 1_000_000 / moved if moved else 0:.1f} ppm of the amount moved)"
        )
        print(
            f"budget: {budget['limit_msat']:,} msat a day; used {budget['used_msat']:,}, "
            f"remaining {budget['remaining_msat']:,}"
        )
        for chan_id in sorted(out_after):
            print(f"  still out of bounds: {chan_id} ratio {before[chan_id]:.3f} -> {after[chan_id]:.3f}")
        print(f"rounds: {[(r['planned'], len(r['results'])) for r in rounds]}")
        print(f"time taken: {elapsed:.2f} s ({elapsed / max(1, len(results)) * 1000:.1f} ms per rebalance)")
        return 0 if fees <= budget["limit_msat"] else 1
    finally:
        if daemon is not None:
            daemon.close()
        simnet.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
