"""Assembles simnet's gRPC server: LND's services over TLS, with LND's state and macaroon gates.

Handlers are built from the protobuf service descriptors so every call goes through one gate
that does what LND's interceptor chain does, in LND's order: first the RPC state (locked,
starting), then the macaroon. Failures carry status UNKNOWN and LND's text. Responses may be
pre-serialized bytes (the invoice stream serializes once for all subscribers).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message_factory import GetMessageClass

from lightningd_py.lnd.rpc import invoices_pb2, lightning_pb2, router_pb2, stateservice_pb2
from lightningd_py.lnd.rpc import stateservice_pb2 as st
from lightningd_py.simnet.hub import SubscriberOverflow
from lightningd_py.simnet.macaroons import MacaroonDenied, MacaroonKeeper

__all__ = ["GRPC_OPTIONS", "CallHolds", "build_handlers", "state_error", "unary_methods"]

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 200 * 1024 * 1024),
    ("grpc.max_send_message_length", 200 * 1024 * 1024),
    # LND's keepalive enforcement: pings at most every 5 s, allowed without active calls.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]

_STATE_ERRORS = {
    st.WAITING_TO_START: "waiting to start, RPC services not available",
    st.NON_EXISTING: "wallet not created, create one to enable full RPC access",
    st.LOCKED: "wallet locked, unlock it to enable full RPC access",
    st.UNLOCKED: "the RPC server is in the process of starting up, but not yet ready to accept calls",
}
# LND's interceptor (rpcperms checkRPCState) lets calls through from RPC_ACTIVE on.


def state_error(state: int) -> str | None:
    """LND's refusal text for a non-State call in `state`, or None when calls are allowed."""
    return _STATE_ERRORS.get(state)


def _serialize(msg: Any) -> bytes:
    return msg if type(msg) is bytes else msg.SerializeToString()


class _Hold:
    __slots__ = ("after", "passed", "release", "waiting")

    def __init__(self, after: int) -> None:
        self.after = after
        self.passed = 0
        self.waiting = 0
        self.release = asyncio.Event()


class CallHolds:
    """Unary calls held back on the control API's request, so that a test can make things
    happen between two calls of a client (between the pages of a catch-up, say).

    ``hold(method, after)``: of the calls to ``method`` from now on, the first ``after`` are
    answered and the rest wait until ``release(method)``. A held call waits after the
    state and macaroon checks, as a slow LND would, and its client's deadline still runs.
    """

    def __init__(self) -> None:
        self._holds: dict[str, _Hold] = {}

    def __bool__(self) -> bool:
        return bool(self._holds)

    def hold(self, method: str, after: int) -> None:
        self.release(method)
        self._holds[method] = _Hold(after)

    def release(self, method: str) -> int:
        """Let ``method``'s calls through again; returns how many were waiting."""
        held = self._holds.pop(method, None)
        if held is None:
            return 0
        held.release.set()
        return held.waiting

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            m: {"after": h.after, "passed": h.passed, "waiting": h.waiting} for m, h in self._holds.items()
        }

    async def enter(self, method: str) -> None:
        held = self._holds.get(method)
        if held is None:
            return
        if held.passed < held.after:
            held.passed += 1
            return
        held.waiting += 1
        try:
            await held.release.wait()
        finally:
            held.waiting -= 1


def unary_methods() -> dict[str, str]:
    """Every unary method simnet serves, by short name -> full path."""
    found: dict[str, str] = {}
    for module, full_name, short in _SERVICES:
        for m in module.DESCRIPTOR.services_by_name[short].methods:
            if not m.client_streaming and not m.server_streaming:
                found.setdefault(m.name, f"/{full_name}/{m.name}")
    return found


_SERVICES = (
    (lightning_pb2, "lnrpc.Lightning", "Lightning"),
    (router_pb2, "routerrpc.Router", "Router"),
    (invoices_pb2, "invoicesrpc.Invoices", "Invoices"),
    (stateservice_pb2, "lnrpc.State", "State"),
)


def build_handlers(
    servicers: dict[str, object],
    macaroons: MacaroonKeeper,
    get_state: Callable[[], int],
    holds: CallHolds | None = None,
) -> list[grpc.GenericRpcHandler]:
    """One generic handler per LND service, for the methods the servicer objects implement."""
    if holds is None:
        holds = CallHolds()
    handlers: list[grpc.GenericRpcHandler] = []
    for module, full_name, short in _SERVICES:
        servicer = servicers.get(short)
        if servicer is None:
            continue
        desc = module.DESCRIPTOR.services_by_name[short]
        gated = short != "State"
        methods: dict[str, grpc.RpcMethodHandler] = {}
        for m in desc.methods:
            impl = getattr(servicer, m.name, None)
            if impl is None or m.client_streaming:
                continue
            path = f"/{full_name}/{m.name}"
            req_cls = GetMessageClass(m.input_type)
            if m.server_streaming:
                methods[m.name] = grpc.unary_stream_rpc_method_handler(
                    _stream(impl, path, gated, macaroons, get_state),
                    request_deserializer=req_cls.FromString,
                    response_serializer=_serialize,
                )
            else:
                methods[m.name] = grpc.unary_unary_rpc_method_handler(
                    _unary(impl, path, gated, macaroons, get_state, holds, m.name),
                    request_deserializer=req_cls.FromString,
                    response_serializer=_serialize,
                )
        handlers.append(grpc.method_handlers_generic_handler(full_name, methods))
    return handlers


async def _gate(
    context: grpc.aio.ServicerContext, path: str, macaroons: MacaroonKeeper, get_state: Callable[[], int]
) -> None:
    refusal = state_error(get_state())
    if refusal is not None:
        await context.abort(grpc.StatusCode.UNKNOWN, refusal)
    try:
        macaroons.check(context.invocation_metadata(), path)
    except MacaroonDenied as exc:
        await context.abort(grpc.StatusCode.UNKNOWN, str(exc))


def _unary(
    impl: Callable[..., Any],
    path: str,
    gated: bool,
    macaroons: MacaroonKeeper,
    get_state: Callable[[], int],
    holds: CallHolds,
    name: str,
) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if gated:
            await _gate(context, path, macaroons, get_state)
        if holds:
            await holds.enter(name)
        return await impl(request, context)

    return handler


def _stream(
    impl: Callable[..., Any], path: str, gated: bool, macaroons: MacaroonKeeper, get_state: Callable[[], int]
) -> Callable[..., Any]:
    # Writing through context.write costs less per message than yielding from a generator.
    # A servicer method that is a plain coroutine writes its messages itself (the hot streams).
    writes_itself = not inspect.isasyncgenfunction(impl)

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> None:
        if gated:
            await _gate(context, path, macaroons, get_state)
        try:
            if writes_itself:
                await impl(request, context)
                return
            write = context.write
            # Closed here, so a stream whose client went away (its write is cancelled) leaves
            # its hub when the call ends, as LND cancels the subscription of a gone client,
            # rather than whenever the garbage collector gets to it.
            async with contextlib.aclosing(impl(request, context)) as items:
                async for item in items:
                    await write(item)
        except SubscriberOverflow as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    return handler
