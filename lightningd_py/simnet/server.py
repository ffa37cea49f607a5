"""The Simnet object: owns the node model and runs the gRPC server and the control API.

`Simnet.start()` binds both servers on 127.0.0.1 and returns once they accept connections;
`restart()` behaves like an LND restart: every open stream ends with status OK, the port is
closed for a while, then the server comes back with the same state, walking through
WAITING_TO_START (and LOCKED when asked) to SERVER_ACTIVE.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from lightningd_py.lnd.rpc import stateservice_pb2 as st
from lightningd_py.simnet.channels import CONFIRMATIONS, ChannelBook
from lightningd_py.simnet.grpc_server import GRPC_OPTIONS, CallHolds, build_handlers
from lightningd_py.simnet.htlcs import HtlcNotifier
from lightningd_py.simnet.macaroons import MacaroonKeeper
from lightningd_py.simnet.node import NodeModel
from lightningd_py.simnet.payments import PaymentEngine
from lightningd_py.simnet.rpc_lightning import LightningServicer
from lightningd_py.simnet.rpc_router import RouterServicer
from lightningd_py.simnet.rpc_state import InvoicesServicer, StateServicer
from lightningd_py.simnet.tls import ensure_tls

__all__ = ["Simnet", "SimnetConfig"]


@dataclass
class SimnetConfig:
    """How to run simnet. Port 0 picks a free port. `confirm_delay` None: only mined blocks confirm."""

    lnddir: Path
    grpc_port: int = 0
    control_port: int = 0
    channels: int = 10
    peers: int = 5
    locked: bool = False
    alias: str = "simnet"
    seed: int | None = None
    confirm_delay: float | None = 0.5
    state_step: float = 0.05
    payment_latency: float = 0.005
    expiry_check: float = 0.2


class Simnet:
    def __init__(self, config: SimnetConfig) -> None:
        self.config = config
        self.lnddir = Path(config.lnddir).resolve()
        self.macaroon_dir = self.lnddir / "data" / "chain" / "bitcoin" / "regtest"
        self.node = NodeModel(
            alias=config.alias, peers=config.peers, channels=config.channels, seed=config.seed
        )
        self.channels = ChannelBook(self.node)
        self.htlcs = HtlcNotifier(self.node)
        self.payments = PaymentEngine(self.node, self.channels, self.htlcs, latency=config.payment_latency)
        self.macaroons: MacaroonKeeper | None = None
        self.grpc_port = config.grpc_port
        self.control_port = config.control_port
        self._server: grpc.aio.Server | None = None
        self._control: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._confirm_task: asyncio.Task[None] | None = None
        self.restarting = False
        self.stopped = asyncio.Event()
        self.holds = CallHolds()

    # ---- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        ensure_tls(self.lnddir)
        self.macaroons = MacaroonKeeper(self.macaroon_dir)
        self.node.state = st.WAITING_TO_START if self.config.locked else st.SERVER_ACTIVE
        await self._start_grpc()
        if self.config.locked:
            self.node.set_state(st.LOCKED)
        from lightningd_py.simnet.control_api import ControlServer

        self._control = ControlServer(self)
        self.control_port = await self._control.start(self.config.control_port)
        self._expiry_task = asyncio.create_task(self._expiry_loop())

    async def _start_grpc(self) -> None:
        assert self.macaroons is not None
        cert, key = self.lnddir / "tls.cert", self.lnddir / "tls.key"
        creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        server = grpc.aio.server(options=GRPC_OPTIONS)
        servicers: dict[str, object] = {
            "Lightning": LightningServicer(self),
            "Router": RouterServicer(self),
            "Invoices": InvoicesServicer(self),
            "State": StateServicer(self),
        }
        handlers = build_handlers(servicers, self.macaroons, lambda: self.node.state, self.holds)
        server.add_generic_rpc_handlers(handlers)
        port = server.add_secure_port(f"127.0.0.1:{self.grpc_port}", creds)
        if port == 0:
            raise OSError(f"grpc port {self.grpc_port}: cannot bind 127.0.0.1:{self.grpc_port}")
        self.grpc_port = port
        await server.start()
        self._server = server

    async def _stop_grpc(self) -> None:
        # Streams end first; stop() then refuses new calls while the ended streams finish
        # (with status OK, as when LND shuts down) within the grace period.
        self._end_streams()
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None

    def _end_streams(self) -> None:
        node = self.node
        node.invoices.stream.end_all()
        for hub in list(node.invoices.single.values()):
            hub.end_all()
        for hub in (
            node.channel_events,
            node.peer_events,
            node.backup_events,
            node.htlc_events,
            node.state_hub,
        ):
            hub.end_all()
        self.channels.updates.end_all()
        self.payments.end_streams()

    async def stop(self) -> None:
        for task in (self._expiry_task, self._state_task, self._confirm_task, *self._tasks):
            if task is not None:
                task.cancel()
        await self._stop_grpc()
        if self._control is not None:
            await self._control.stop()
            self._control = None
        self.stopped.set()

    async def restart(
        self, down_seconds: float = 1.0, regenerate_tls: bool = False, locked: bool = False
    ) -> None:
        """Stop like LND does (streams end OK), stay down, come back through the start-up states."""
        if self.restarting:
            raise RuntimeError("a restart is already in progress")
        self.restarting = True
        try:
            await self._stop_grpc()
            await asyncio.sleep(max(0.0, down_seconds))
            if regenerate_tls:
                ensure_tls(self.lnddir, regenerate=True)
            self.node.state = st.WAITING_TO_START
            await self._start_grpc()
            # Like LND with wallet-unlock-password-file: LOCKED briefly, then on to SERVER_ACTIVE.
            await asyncio.sleep(self.config.state_step)
            self.node.set_state(st.LOCKED)
            if not locked:
                await self._walk_to_active()
        finally:
            self.restarting = False

    async def _walk_to_active(self) -> None:
        for state in (st.UNLOCKED, st.RPC_ACTIVE, st.SERVER_ACTIVE):
            await asyncio.sleep(self.config.state_step)
            self.node.set_state(state)

    async def unlock(self) -> None:
        if self.node.state not in (st.LOCKED, st.WAITING_TO_START, st.NON_EXISTING):
            raise RuntimeError(f"wallet is not locked (state {st.WalletState.Name(self.node.state)})")
        await self._walk_to_active()

    def lock(self) -> None:
        """Put the node back into LOCKED (as if LND were restarted and waits for its password)."""
        self._end_streams()
        self.node.set_state(st.LOCKED)

    # ---- background work -------------------------------------------------------------
    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.expiry_check)
            self.node.invoices.expire_due()

    def schedule_confirmations(self) -> None:
        """With confirm_delay set, mine the blocks pending channel transactions need, shortly."""
        if self.config.confirm_delay is None:
            return
        if self._confirm_task is None or self._confirm_task.done():
            self._confirm_task = asyncio.create_task(self._confirm_soon(self.config.confirm_delay))

    async def _confirm_soon(self, delay: float) -> None:
        while self.channels.confirm_at:
            await asyncio.sleep(delay)
            due = min(self.channels.confirm_at.values()) - self.node.block_height
            self.channels.mine(max(1, min(due, CONFIRMATIONS)))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- description ------------------------------------------------------------------
    def info(self) -> dict[str, str]:
        return {
            "grpc": f"127.0.0.1:{self.grpc_port}",
            "control": f"http://127.0.0.1:{self.control_port}",
            "tls_cert": str(self.lnddir / "tls.cert"),
            "admin_macaroon": str(self.macaroon_dir / "admin.macaroon"),
            "invoice_macaroon": str(self.macaroon_dir / "invoice.macaroon"),
            "readonly_macaroon": str(self.macaroon_dir / "readonly.macaroon"),
            "lnddir": str(self.lnddir),
            "network": "regtest",
        }

    async def __aenter__(self) -> Simnet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.stop()
