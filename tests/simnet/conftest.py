"""Fixtures: a simnet subprocess and gRPC stubs that reach it over TLS with a macaroon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from lightningd_py.lnd.rpc import (
    invoices_pb2_grpc,
    lightning_pb2_grpc,
    router_pb2_grpc,
    stateservice_pb2_grpc,
)
from lightningd_py.simnet.control import SimnetControl


@dataclass
class SimnetProc:
    info: dict[str, str]
    control: SimnetControl
    proc: subprocess.Popen[str]

    def macaroon_hex(self, kind: str = "admin") -> str:
        return Path(self.info[f"{kind}_macaroon"]).read_bytes().hex()

    def channel(
        self, kind: str | None = "admin", options: list[tuple[str, object]] | None = None
    ) -> grpc.aio.Channel:
        """A grpc.aio channel with TLS and (unless kind is None) the macaroon as call credentials;
        ``options`` are added to the channel's."""
        os.environ.setdefault("GRPC_SSL_CIPHER_SUITES", "HIGH+ECDSA")
        cert = Path(self.info["tls_cert"]).read_bytes()
        creds = grpc.ssl_channel_credentials(cert)
        if kind is not None:
            mac = self.macaroon_hex(kind)

            def plugin(context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
                callback((("macaroon", mac),), None)

            creds = grpc.composite_channel_credentials(creds, grpc.metadata_call_credentials(plugin))
        return grpc.aio.secure_channel(
            self.info["grpc"],
            creds,
            options=[("grpc.max_receive_message_length", 200 << 20), *(options or [])],
        )


def start_simnet(tmp: Path, *args: str) -> SimnetProc:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightningd_py.simnet", "--dir", str(tmp / "lnd"), "--seed", "7", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise RuntimeError(f"simnet exited with {proc.returncode} before printing its ready line")
    info = json.loads(line)
    return SimnetProc(info=info, control=SimnetControl(info["control"]), proc=proc)


@pytest.fixture
def simnet(tmp_path: Path) -> Iterator[SimnetProc]:
    sim = start_simnet(tmp_path)
    try:
        yield sim
    finally:
        sim.proc.terminate()
        sim.proc.wait(10)


def stubs(channel: grpc.aio.Channel) -> tuple[object, object, object, object]:
    return (
        lightning_pb2_grpc.LightningStub(channel),
        router_pb2_grpc.RouterStub(channel),
        invoices_pb2_grpc.InvoicesStub(channel),
        stateservice_pb2_grpc.StateStub(channel),
    )
