"""The command line: the ready line, the files it names, and a clean exit on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.simnet import AsyncSimnetControl, Simnet, SimnetConfig, SimnetControl

from .conftest import SimnetProc, start_simnet, stubs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ready_line_and_signal_exit(tmp_path: Path, sig: signal.Signals) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = start_simnet(tmp_path, "--grpc-port", str(port), "--channels", "3", "--peers", "2")
    try:
        info = sim.info
        assert set(info) == {
            "grpc",
            "control",
            "tls_cert",
            "admin_macaroon",
            "invoice_macaroon",
            "readonly_macaroon",
            "lnddir",
            "network",
        }
        assert info["grpc"] == f"127.0.0.1:{port}" and info["network"] == "regtest"
        assert info["control"].startswith("http://127.0.0.1:")
        lnddir = Path(info["lnddir"])
        assert Path(info["tls_cert"]) == lnddir / "tls.cert" and (lnddir / "tls.key").exists()
        for kind in ("admin", "invoice", "readonly"):
            assert (
                Path(info[f"{kind}_macaroon"]) == lnddir / "data/chain/bitcoin/regtest" / f"{kind}.macaroon"
            )
        state = sim.control.state()
        assert state["channels"]["open"] == 3 and len(state["peers"]) == 2
    finally:
        sim.proc.send_signal(sig)
        assert sim.proc.wait(10) == 0


def test_bad_arguments_exit_non_zero(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightningd_py.simnet",
            "--dir",
            str(tmp_path),
            "--channels",
            "4",
            "--peers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and "--channels/--peers" in res.stderr


def test_in_process_simnet(tmp_path: Path) -> None:
    async def run() -> None:
        async with Simnet(SimnetConfig(lnddir=tmp_path / "lnd", channels=2, peers=1, seed=1)) as sim:
            proc = SimnetProc(info=sim.info(), control=SimnetControl(sim.info()["control"]), proc=None)  # type: ignore[arg-type]
            async with proc.channel("readonly") as ch:
                lnd, _, _, _ = stubs(ch)
                info = await lnd.GetInfo(ln.GetInfoRequest())
                assert info.identity_pubkey == sim.node.pubkey and info.num_active_channels == 2
            async with AsyncSimnetControl(sim.info()["control"]) as control:
                assert (await control.mine(3))["block_height"] == sim.node.block_height

    asyncio.run(run())
