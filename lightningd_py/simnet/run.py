"""Command line for simnet (`python -m lightningd_py.simnet`, `lightningd-py simnet`): run until a signal.

Prints one JSON line with the connection details once both servers accept connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from lightningd_py.simnet.server import Simnet, SimnetConfig

__all__ = ["main", "parse_args", "serve"]


def parse_args(argv: Sequence[str] | None) -> SimnetConfig:
    parser = argparse.ArgumentParser(
        prog="lightningd-py simnet", description="A simulated LND node over real gRPC."
    )
    parser.add_argument("--dir", required=True, type=Path, help="LND data directory to create/use (lnddir)")
    parser.add_argument(
        "--grpc-port", type=int, default=0, help="gRPC port on 127.0.0.1 (0: pick a free one)"
    )
    parser.add_argument("--control-port", type=int, default=0, help="control API port (0: pick a free one)")
    parser.add_argument("--channels", type=int, default=10, help="number of open channels at start")
    parser.add_argument("--peers", type=int, default=5, help="number of connected peers")
    parser.add_argument("--locked", action="store_true", help="start LOCKED; unlock through the control API")
    parser.add_argument("--alias", default="simnet", help="node alias")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible peers and channels")
    parser.add_argument(
        "--confirm-delay",
        type=float,
        default=0.5,
        help="seconds before pending channel transactions confirm by themselves (-1: only /mine)",
    )
    args = parser.parse_args(argv)
    for name in ("grpc_port", "control_port"):
        if not 0 <= getattr(args, name) <= 65535:
            parser.error(f"--{name.replace('_', '-')}: expected a port 0-65535")
    if args.channels < 0 or args.peers < 0 or (args.channels and not args.peers):
        parser.error(
            "--channels/--peers: expected counts >= 0, and at least one peer when there are channels"
        )
    return SimnetConfig(
        lnddir=args.dir,
        grpc_port=args.grpc_port,
        control_port=args.control_port,
        channels=args.channels,
        peers=args.peers,
        locked=args.locked,
        alias=args.alias,
        seed=args.seed,
        confirm_delay=None if args.confirm_delay < 0 else args.confirm_delay,
    )


async def serve(config: SimnetConfig, *, announce: bool = True) -> None:
    """Run simnet until SIGTERM/SIGINT (or cancellation), printing the ready line when asked."""
    sim = Simnet(config)
    await sim.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if announce:
            sys.stdout.write(json.dumps(sim.info()) + "\n")
            sys.stdout.flush()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"simnet: {exc}", file=sys.stderr)
        return 1
    return 0
