"""Tests for protos/ (our subset of LND's API) and the code generated from it.

- The committed code in lightningd_py/lnd/rpc/ must be what scripts/gen_protos.py
  produces from protos/ today.
- Every service, method, message, field and enum value in protos/ must match LND's
  genuine definitions, taken from the lnd-grpc-client package (test-only dependency,
  located without importing it: its generated modules would clash with ours in the
  default descriptor pool).
- Messages filled through every field must survive a trip through LND's own message
  classes, and the generated stubs must work over a real gRPC connection.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpc_tools import protoc

import lightningd_py.lnd.rpc as rpc_package
from lightningd_py.lnd.rpc import (
    invoices_pb2,
    lightning_pb2,
    lightning_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    stateservice_pb2,
    stateservice_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
RPC_DIR = ROOT / "lightningd_py" / "lnd" / "rpc"
GEN_SCRIPT = ROOT / "scripts" / "gen_protos.py"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
LND_FILES = ("lightning.proto", "stateservice.proto", "router.proto", "invoices.proto")

# The RPCs the rest of the daemon and simnet are written against; dropping one from
# protos/ breaks them, so it has to be a deliberate change to this list too.
REQUIRED_RPCS: dict[str, tuple[str, ...]] = {
    "lnrpc.Lightning": (
        "GetInfo",
        "WalletBalance",
        "ChannelBalance",
        "ListChannels",
        "PendingChannels",
        "ClosedChannels",
        "OpenChannelSync",
        "OpenChannel",
        "CloseChannel",
        "AddInvoice",
        "LookupInvoice",
        "ListInvoices",
        "SubscribeInvoices",
        "DecodePayReq",
        "ListPayments",
        "ListPeers",
        "SubscribePeerEvents",
        "SubscribeChannelEvents",
        "SubscribeChannelBackups",
        "ExportAllChannelBackups",
        "GetNodeInfo",
        "GetChanInfo",
        "FeeReport",
        "UpdateChannelPolicy",
        "ForwardingHistory",
        "EstimateFee",
        "ConnectPeer",
        "QueryRoutes",
    ),
    "lnrpc.State": ("SubscribeState", "GetState"),
    "routerrpc.Router": (
        "SendPaymentV2",
        "TrackPaymentV2",
        "TrackPayments",
        "SubscribeHtlcEvents",
        "SendToRouteV2",
        "EstimateRouteFee",
    ),
    "invoicesrpc.Invoices": (
        "SubscribeSingleInvoice",
        "CancelInvoice",
        "AddHoldInvoice",
        "SettleInvoice",
        "LookupInvoiceV2",
    ),
}


# --------------------------------------------------------------------------- helpers


@dataclass
class Definitions:
    """Every service, message and enum of a FileDescriptorSet, by full name (no dot)."""

    fds: descriptor_pb2.FileDescriptorSet
    files: dict[str, descriptor_pb2.FileDescriptorProto] = field(default_factory=dict)
    services: dict[str, descriptor_pb2.ServiceDescriptorProto] = field(default_factory=dict)
    messages: dict[str, descriptor_pb2.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)
    # full name of each service/message/enum -> name of the file defining it
    origin: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_set(cls, fds: descriptor_pb2.FileDescriptorSet, only: set[str] | None = None) -> Definitions:
        defs = cls(fds)
        for file in fds.file:
            if only is not None and file.name not in only:
                continue
            defs.files[file.name] = file
            for svc in file.service:
                name = f"{file.package}.{svc.name}"
                defs.services[name] = svc
                defs.origin[name] = file.name
            for enum in file.enum_type:
                name = f"{file.package}.{enum.name}"
                defs.enums[name] = enum
                defs.origin[name] = file.name
            for msg in file.message_type:
                defs._add_message(f"{file.package}.{msg.name}", msg, file.name)
        return defs

    def _add_message(self, name: str, msg: descriptor_pb2.DescriptorProto, file: str) -> None:
        self.messages[name] = msg
        self.origin[name] = file
        for enum in msg.enum_type:
            self.enums[f"{name}.{enum.name}"] = enum
            self.origin[f"{name}.{enum.name}"] = file
        for nested in msg.nested_type:
            self._add_message(f"{name}.{nested.name}", nested, file)


def _compile(proto_path: Path, files: list[str], out: Path) -> descriptor_pb2.FileDescriptorSet:
    """Compile ``files`` to a descriptor set with grpc_tools' bundled protoc."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={proto_path}",
            f"--proto_path={well_known}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *files,
        ]
    )
    assert status == 0, f"protoc failed on {files} in {proto_path}"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _lnd_proto_dir() -> Path:
    spec = importlib.util.find_spec("lndgrpc")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "lnd-grpc-client is not installed; it ships LND's genuine .proto files. "
            "Install the test extra: pip install -e '.[test]'"
        )
    compiled = Path(next(iter(spec.submodule_search_locations))) / "compiled"
    missing = [name for name in LND_FILES if not (compiled / name).is_file()]
    assert not missing, f"{compiled} lacks {missing}"
    return compiled


@pytest.fixture(scope="module")
def lnd(tmp_path_factory: pytest.TempPathFactory) -> Definitions:
    """LND's genuine definitions, compiled from the lnd-grpc-client package."""
    compiled = _lnd_proto_dir()
    # The package rewrites LND's `import "lightning.proto"` into a path of its own
    # (e.g. "lndgrpc/compiled/lightning.proto"): compile from the matching root so
    # that lightning.proto is loaded once, under that name.
    router_text = (compiled / "router.proto").read_text(encoding="utf-8")
    match = re.search(r'^import "(?P<prefix>(?:[\w.-]+/)*)lightning\.proto";', router_text, re.M)
    assert match, f"cannot find the lightning.proto import in {compiled / 'router.proto'}"
    prefix = match["prefix"]
    root = compiled
    for _ in prefix.strip("/").split("/") if prefix else ():
        root = root.parent
    files = [prefix + name for name in LND_FILES]
    out = tmp_path_factory.mktemp("lnd-descriptors") / "lnd.pb"
    return Definitions.from_set(_compile(root, files, out), only=set(files))


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Definitions:
    """Our definitions, compiled from protos/."""
    files = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    assert files, f"no .proto files under {PROTOS}"
    out = tmp_path_factory.mktemp("our-descriptors") / "ours.pb"
    return Definitions.from_set(_compile(PROTOS, files, out))


# ------------------------------------------------------------------- staleness


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, f"scripts/gen_protos.py failed:\n{result.stderr}"

    def generated(directory: Path) -> dict[str, bytes]:
        return {
            p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name.endswith(GENERATED_SUFFIXES)
        }

    fresh, committed = generated(tmp_path), generated(RPC_DIR)
    problems = [f"missing: {name}" for name in sorted(fresh.keys() - committed.keys())]
    problems += [f"not generated any more: {name}" for name in sorted(committed.keys() - fresh)]
    problems += [
        f"differs: {name}"
        for name in sorted(fresh.keys() & committed.keys())
        if fresh[name] != committed[name]
    ]
    assert not problems, (
        "lightningd_py/lnd/rpc/ is stale relative to protos/; run `make protos` and commit "
        "the result.\n" + "\n".join(problems)
    )


# ----------------------------------------------------------- wire compatibility


def test_files_match_lnd_packages(ours: Definitions, lnd: Definitions) -> None:
    """Each of our files declares the package and go_package of the LND file it mirrors."""
    problems = []
    for name, file in ours.files.items():
        counterparts = {
            lnd.origin[f"{file.package}.{svc.name}"]
            for svc in file.service
            if f"{file.package}.{svc.name}" in lnd.origin
        }
        if len(counterparts) != 1:
            problems.append(f"{name}: cannot pair with one LND file (found {counterparts})")
            continue
        theirs = lnd.files[counterparts.pop()]
        if Path(name).name != Path(theirs.name).name:
            problems.append(f"{name}: LND calls this file {Path(theirs.name).name}")
        if file.package != theirs.package:
            problems.append(f"{name}: package {file.package!r}, LND has {theirs.package!r}")
        if file.options.go_package != theirs.options.go_package:
            problems.append(
                f"{name}: go_package {file.options.go_package!r}, LND has {theirs.options.go_package!r}"
            )
        ours_deps = sorted(Path(d).name for d in file.dependency)
        lnd_deps = sorted(Path(d).name for d in theirs.dependency)
        if ours_deps != lnd_deps:
            problems.append(f"{name}: imports {ours_deps}, LND imports {lnd_deps}")
    assert not problems, "\n".join(problems)


def test_services_match_lnd(ours: Definitions, lnd: Definitions) -> None:
    problems = []
    for name, svc in ours.services.items():
        theirs = lnd.services.get(name)
        if theirs is None:
            problems.append(f"service {name}: not in LND")
            continue
        lnd_methods = {m.name: m for m in theirs.method}
        for method in svc.method:
            where = f"rpc {name}.{method.name}"
            other = lnd_methods.get(method.name)
            if other is None:
                problems.append(f"{where}: not in LND")
                continue
            for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(method, attr) != getattr(other, attr):
                    problems.append(
                        f"{where}: {attr} is {getattr(method, attr)!r}, LND has {getattr(other, attr)!r}"
                    )
    assert not problems, "\n".join(problems)


def _oneof_name(msg: descriptor_pb2.DescriptorProto, fld: descriptor_pb2.FieldDescriptorProto) -> str | None:
    if not fld.HasField("oneof_index"):
        return None
    return msg.oneof_decl[fld.oneof_index].name


def _show(fld: descriptor_pb2.FieldDescriptorProto, attr: str) -> str:
    value = getattr(fld, attr)
    if attr == "type":
        return descriptor_pb2.FieldDescriptorProto.Type.Name(value)
    if attr == "label":
        return descriptor_pb2.FieldDescriptorProto.Label.Name(value)
    return repr(value)


def test_messages_match_lnd(ours: Definitions, lnd: Definitions) -> None:
    problems = []
    compared = ("number", "type", "type_name", "label", "proto3_optional")
    for name, msg in ours.messages.items():
        theirs = lnd.messages.get(name)
        if theirs is None:
            problems.append(f"message {name}: not in LND")
            continue
        if msg.options.map_entry != theirs.options.map_entry:
            problems.append(f"message {name}: map_entry differs from LND")
        lnd_fields = {f.name: f for f in theirs.field}
        for fld in msg.field:
            where = f"field {name}.{fld.name}"
            other = lnd_fields.get(fld.name)
            if other is None:
                problems.append(f"{where}: not in LND")
                continue
            for attr in compared:
                if getattr(fld, attr) != getattr(other, attr):
                    problems.append(f"{where}: {attr} is {_show(fld, attr)}, LND has {_show(other, attr)}")
            if _oneof_name(msg, fld) != _oneof_name(theirs, other):
                problems.append(
                    f"{where}: oneof {_oneof_name(msg, fld)!r}, LND has {_oneof_name(theirs, other)!r}"
                )
    assert not problems, "\n".join(problems)


def test_enums_match_lnd(ours: Definitions, lnd: Definitions) -> None:
    """Same numbers, and no LND value left out (a missing value would decode nameless)."""
    problems = []
    for name, enum in ours.enums.items():
        theirs = lnd.enums.get(name)
        if theirs is None:
            problems.append(f"enum {name}: not in LND")
            continue
        lnd_values = {v.name: v.number for v in theirs.value}
        our_values = {v.name: v.number for v in enum.value}
        for value, number in our_values.items():
            if value not in lnd_values:
                problems.append(f"enum value {name}.{value}: not in LND")
            elif lnd_values[value] != number:
                problems.append(f"enum value {name}.{value}: number {number}, LND has {lnd_values[value]}")
        for value in sorted(lnd_values.keys() - our_values.keys()):
            problems.append(f"enum value {name}.{value}: in LND, missing here")
    assert not problems, "\n".join(problems)


def test_required_rpcs_are_present(ours: Definitions) -> None:
    problems = []
    for service, methods in REQUIRED_RPCS.items():
        present = {m.name for m in ours.services[service].method} if service in ours.services else set()
        problems += [f"{service}.{m}" for m in methods if m not in present]
    assert not problems, "RPCs the daemon relies on are missing from protos/: " + ", ".join(problems)


# ----------------------------------------------------------- round trips via LND


def _fill(msg: Message, depth: int = 0) -> None:
    """Set every field (one member per oneof) to a non-default value."""
    filled_oneofs: set[str] = set()
    for fld in msg.DESCRIPTOR.fields:
        oneof = fld.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:
            if oneof.name in filled_oneofs:
                continue
            filled_oneofs.add(oneof.name)
        msg_type = fld.message_type
        if msg_type is not None and msg_type.GetOptions().map_entry:
            key_fld, value_fld = msg_type.fields_by_name["key"], msg_type.fields_by_name["value"]
            container = getattr(msg, fld.name)
            key = _scalar(key_fld)
            if value_fld.message_type is not None:
                if depth < 3:
                    _fill(container[key], depth + 1)
                else:
                    container[key].SetInParent()
            else:
                container[key] = _scalar(value_fld)
        elif msg_type is not None:
            target = getattr(msg, fld.name).add() if fld.is_repeated else getattr(msg, fld.name)
            if depth < 3:
                _fill(target, depth + 1)
            target.SetInParent()
        elif fld.is_repeated:
            getattr(msg, fld.name).append(_scalar(fld))
        else:
            setattr(msg, fld.name, _scalar(fld))


def _scalar(fld: FieldDescriptor) -> object:
    if fld.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return fld.enum_type.values[-1].number
    if fld.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return True
    if fld.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return 0.5
    if fld.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return fld.name if fld.type == FieldDescriptor.TYPE_STRING else fld.name.encode()
    # Largest positive value that fits every integer type we use (uint32, int32, ...).
    return fld.number + 2**30


def _our_descriptors() -> Iterator[Descriptor]:
    modules = (lightning_pb2, stateservice_pb2, router_pb2, invoices_pb2)

    def walk(desc: Descriptor) -> Iterator[Descriptor]:
        if not desc.GetOptions().map_entry:
            yield desc
        for nested in desc.nested_types:
            yield from walk(nested)

    for module in modules:
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            yield from walk(desc)


def test_every_message_round_trips_through_lnd_classes(lnd: Definitions) -> None:
    """Bytes from our classes decode in LND's, and back, with nothing lost either way."""
    pool = descriptor_pool.DescriptorPool()
    for file in lnd.fds.file:  # --include_imports lists dependencies first
        pool.Add(file)
    problems = []
    for desc in _our_descriptors():
        ours_cls = message_factory.GetMessageClass(desc)
        lnd_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(desc.full_name))
        original = ours_cls()
        _fill(original)
        via_lnd = lnd_cls.FromString(original.SerializeToString())
        back = ours_cls.FromString(via_lnd.SerializeToString())
        as_dict = MessageToDict(original, preserving_proto_field_name=True)
        if MessageToDict(via_lnd, preserving_proto_field_name=True) != as_dict:
            problems.append(f"{desc.full_name}: LND decodes our bytes differently")
        if back != original:
            problems.append(f"{desc.full_name}: does not survive ours -> LND -> ours")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ sanity


def test_generated_modules_import() -> None:
    for name in rpc_package.__all__:
        module = importlib.import_module(f"lightningd_py.lnd.rpc.{name}")
        assert module.__name__ == f"lightningd_py.lnd.rpc.{name}"
    assert lightning_pb2.Invoice.__module__ == "lightningd_py.lnd.rpc.lightning_pb2"
    assert router_pb2.SendPaymentRequest.DESCRIPTOR.full_name == "routerrpc.SendPaymentRequest"


def test_message_round_trip() -> None:
    invoice = lightning_pb2.Invoice(
        memo="coffee",
        r_hash=bytes(32),
        value_msat=21_000,
        state=lightning_pb2.Invoice.SETTLED,
        add_index=7,
        settle_index=3,
        route_hints=[
            lightning_pb2.RouteHint(
                hop_hints=[lightning_pb2.HopHint(node_id="02" + "ab" * 32, chan_id=2**63 + 5)]
            )
        ],
        htlcs=[lightning_pb2.InvoiceHTLC(chan_id=1, amt_msat=21_000, custom_records={65536: b"x"})],
        features={9: lightning_pb2.Feature(name="tlv-onion", is_known=True)},
    )
    decoded = lightning_pb2.Invoice.FromString(invoice.SerializeToString())
    assert decoded == invoice
    assert decoded.route_hints[0].hop_hints[0].chan_id == 2**63 + 5
    assert decoded.htlcs[0].custom_records[65536] == b"x"

    update = lightning_pb2.OpenStatusUpdate(chan_pending=lightning_pb2.PendingUpdate(txid=b"t"))
    assert update.WhichOneof("update") == "chan_pending"

    request = router_pb2.SendPaymentRequest(
        payment_request="lnbcrt1...",
        fee_limit_msat=1_000,
        outgoing_chan_ids=[1, 2],
        route_hints=[lightning_pb2.RouteHint()],
    )
    assert router_pb2.SendPaymentRequest.FromString(request.SerializeToString()) == request


class _State(stateservice_pb2_grpc.StateServicer):
    def GetState(
        self, request: stateservice_pb2.GetStateRequest, context: grpc.ServicerContext
    ) -> stateservice_pb2.GetStateResponse:
        return stateservice_pb2.GetStateResponse(state=stateservice_pb2.SERVER_ACTIVE)

    def SubscribeState(
        self, request: stateservice_pb2.SubscribeStateRequest, context: grpc.ServicerContext
    ) -> Iterator[stateservice_pb2.SubscribeStateResponse]:
        for state in (stateservice_pb2.UNLOCKED, stateservice_pb2.SERVER_ACTIVE):
            yield stateservice_pb2.SubscribeStateResponse(state=state)


class _Lightning(lightning_pb2_grpc.LightningServicer):
    def GetInfo(
        self, request: lightning_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> lightning_pb2.GetInfoResponse:
        return lightning_pb2.GetInfoResponse(identity_pubkey="02" + "11" * 32, block_height=101)


class _Router(router_pb2_grpc.RouterServicer):
    def TrackPayments(
        self, request: router_pb2.TrackPaymentsRequest, context: grpc.ServicerContext
    ) -> Iterator[lightning_pb2.Payment]:
        yield lightning_pb2.Payment(payment_hash="aa", status=lightning_pb2.Payment.SUCCEEDED)


def test_stubs_over_grpc() -> None:
    """The generated stubs and servicers talk over a real (local, plaintext) channel."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    stateservice_pb2_grpc.add_StateServicer_to_server(_State(), server)
    lightning_pb2_grpc.add_LightningServicer_to_server(_Lightning(), server)
    router_pb2_grpc.add_RouterServicer_to_server(_Router(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            state = stateservice_pb2_grpc.StateStub(channel)
            assert state.GetState(stateservice_pb2.GetStateRequest(), timeout=5).state == (
                stateservice_pb2.SERVER_ACTIVE
            )
            states = [
                r.state for r in state.SubscribeState(stateservice_pb2.SubscribeStateRequest(), timeout=5)
            ]
            assert states == [stateservice_pb2.UNLOCKED, stateservice_pb2.SERVER_ACTIVE]

            info = lightning_pb2_grpc.LightningStub(channel).GetInfo(
                lightning_pb2.GetInfoRequest(), timeout=5
            )
            assert info.block_height == 101

            payments = list(
                router_pb2_grpc.RouterStub(channel).TrackPayments(
                    router_pb2.TrackPaymentsRequest(), timeout=5
                )
            )
            assert [p.status for p in payments] == [lightning_pb2.Payment.SUCCEEDED]

            with pytest.raises(grpc.RpcError) as excinfo:
                lightning_pb2_grpc.LightningStub(channel).WalletBalance(
                    lightning_pb2.WalletBalanceRequest(), timeout=5
                )
            assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)
