"""LND-style macaroons: bake admin/invoice/readonly files and check each call's permissions.

Layout and identifiers follow LND: files under DIR/data/chain/bitcoin/<network>/, a binary (v2)
macaroon whose identifier is a version byte (3) plus a protobuf MacaroonId listing entity/action
operations, signed with a root key kept beside the files. Failures use LND's exact texts because
clients classify errors by them (they arrive as status UNKNOWN, never UNAUTHENTICATED).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pymacaroons import MACAROON_V2, Macaroon, Verifier
from pymacaroons.exceptions import MacaroonException
from pymacaroons.serializers.binary_serializer import BinarySerializer

__all__ = [
    "ADMIN_OPS",
    "INVOICE_OPS",
    "METHOD_PERMISSIONS",
    "READONLY_OPS",
    "MacaroonDenied",
    "MacaroonKeeper",
]

_ENTITIES = ("onchain", "offchain", "address", "message", "peers", "info", "invoices", "signer", "macaroon")
ADMIN_OPS: dict[str, tuple[str, ...]] = {e: ("read", "write") for e in _ENTITIES} | {
    "macaroon": ("generate", "write", "read")
}
READONLY_OPS: dict[str, tuple[str, ...]] = {e: ("read",) for e in _ENTITIES}
INVOICE_OPS: dict[str, tuple[str, ...]] = {
    "invoices": ("read", "write"),
    "address": ("read", "write"),
    "onchain": ("read",),
}

_R = "read"
_W = "write"
_LN = "/lnrpc.Lightning/"
# LND's per-method permissions (rpcserver.go MainRPCServerPermissions and the sub-servers).
METHOD_PERMISSIONS: dict[str, tuple[tuple[str, str], ...]] = {
    _LN + "WalletBalance": (("onchain", _R),),
    _LN + "ChannelBalance": (("offchain", _R),),
    _LN + "EstimateFee": (("onchain", _R),),
    _LN + "ConnectPeer": (("peers", _W),),
    _LN + "ListPeers": (("peers", _R),),
    _LN + "SubscribePeerEvents": (("peers", _R),),
    _LN + "GetInfo": (("info", _R),),
    _LN + "PendingChannels": (("offchain", _R),),
    _LN + "ListChannels": (("offchain", _R),),
    _LN + "SubscribeChannelEvents": (("offchain", _R),),
    _LN + "ClosedChannels": (("offchain", _R),),
    _LN + "OpenChannelSync": (("onchain", _W), ("offchain", _W)),
    _LN + "OpenChannel": (("onchain", _W), ("offchain", _W)),
    _LN + "CloseChannel": (("onchain", _W), ("offchain", _W)),
    _LN + "AddInvoice": (("invoices", _W),),
    _LN + "ListInvoices": (("invoices", _R),),
    _LN + "LookupInvoice": (("invoices", _R),),
    _LN + "SubscribeInvoices": (("invoices", _R),),
    _LN + "DecodePayReq": (("offchain", _R),),
    _LN + "ListPayments": (("offchain", _R),),
    _LN + "GetChanInfo": (("info", _R),),
    _LN + "GetNodeInfo": (("info", _R),),
    _LN + "QueryRoutes": (("info", _R),),
    _LN + "FeeReport": (("offchain", _R),),
    _LN + "UpdateChannelPolicy": (("offchain", _W),),
    _LN + "ForwardingHistory": (("offchain", _R),),
    _LN + "ExportAllChannelBackups": (("offchain", _R),),
    _LN + "SubscribeChannelBackups": (("offchain", _R),),
    "/routerrpc.Router/SendPaymentV2": (("offchain", _W),),
    "/routerrpc.Router/TrackPaymentV2": (("offchain", _R),),
    "/routerrpc.Router/TrackPayments": (("offchain", _R),),
    "/routerrpc.Router/EstimateRouteFee": (("offchain", _R),),
    "/routerrpc.Router/SendToRouteV2": (("offchain", _W),),
    "/routerrpc.Router/SubscribeHtlcEvents": (("offchain", _R),),
    "/invoicesrpc.Invoices/SubscribeSingleInvoice": (("invoices", _R),),
    "/invoicesrpc.Invoices/CancelInvoice": (("invoices", _W),),
    "/invoicesrpc.Invoices/AddHoldInvoice": (("invoices", _W),),
    "/invoicesrpc.Invoices/SettleInvoice": (("invoices", _W),),
    "/invoicesrpc.Invoices/LookupInvoiceV2": (("invoices", _R),),
}

_MACAROON_ID_VERSION = 3


class MacaroonDenied(Exception):
    """A call's macaroon is missing, invalid or lacks a permission; str() is LND's text."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _encode_id(ops: dict[str, tuple[str, ...]]) -> bytes:
    body = _field(1, secrets.token_bytes(32)) + _field(2, b"0")
    for entity, actions in ops.items():
        op = _field(1, entity.encode()) + b"".join(_field(2, a.encode()) for a in actions)
        body += _field(3, op)
    return bytes([_MACAROON_ID_VERSION]) + body


def _read_fields(buf: bytes) -> Iterable[tuple[int, bytes]]:
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        if key & 7 != 2:
            raise ValueError("unexpected wire type in macaroon id")
        length, i = _read_varint(buf, i)
        yield key >> 3, buf[i : i + length]
        i += length


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _decode_ops(identifier: bytes) -> set[tuple[str, str]]:
    if not identifier or identifier[0] != _MACAROON_ID_VERSION:
        raise ValueError("unknown macaroon id version")
    ops: set[tuple[str, str]] = set()
    for num, payload in _read_fields(identifier[1:]):
        if num != 3:
            continue
        entity = ""
        actions: list[str] = []
        for sub, value in _read_fields(payload):
            if sub == 1:
                entity = value.decode()
            elif sub == 2:
                actions.append(value.decode())
        ops.update((entity, a) for a in actions)
    return ops


@dataclass(frozen=True)
class MacaroonPaths:
    admin: Path
    invoice: Path
    readonly: Path


class MacaroonKeeper:
    """Owns the root key, bakes the default macaroons and authorises calls."""

    def __init__(self, macaroon_dir: Path) -> None:
        self.dir = macaroon_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "macaroons.key"
        if not key_file.exists():
            key_file.write_bytes(secrets.token_bytes(32))
            os.chmod(key_file, 0o600)
        self._root_key = key_file.read_bytes()
        self.paths = MacaroonPaths(
            admin=self.dir / "admin.macaroon",
            invoice=self.dir / "invoice.macaroon",
            readonly=self.dir / "readonly.macaroon",
        )
        for path, ops in (
            (self.paths.admin, ADMIN_OPS),
            (self.paths.invoice, INVOICE_OPS),
            (self.paths.readonly, READONLY_OPS),
        ):
            if not path.exists():
                path.write_bytes(self.bake(ops))
                os.chmod(path, 0o600)

    def bake(self, ops: dict[str, tuple[str, ...]], caveats: Sequence[str] = ()) -> bytes:
        """A new binary macaroon granting `ops`, with optional first-party caveats."""
        mac = Macaroon(location="lnd", identifier=_encode_id(ops), key=self._root_key, version=MACAROON_V2)
        for caveat in caveats:
            mac.add_first_party_caveat(caveat)
        return BinarySerializer().serialize_raw(mac)

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None, method: str) -> None:
        """Raise MacaroonDenied unless the call's "macaroon" metadata allows `method`."""
        values = [v for k, v in (metadata or ()) if k == "macaroon"]
        if len(values) != 1:
            raise MacaroonDenied(f"expected 1 macaroon, got {len(values)}")
        raw_value = values[0]
        text = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
        try:
            raw = bytes.fromhex(text)
            mac = BinarySerializer().deserialize_raw(raw)
        except (ValueError, MacaroonException, IndexError):
            raise MacaroonDenied("unable to decode macaroon: invalid macaroon encoding") from None
        verifier = Verifier()
        verifier.satisfy_general(_satisfy_caveat)
        try:
            verifier.verify(mac, self._root_key)
        except MacaroonException:
            raise MacaroonDenied(
                "verification failed: signature mismatch after caveat verification"
            ) from None
        try:
            ops = _decode_ops(mac.identifier_bytes)
        except (ValueError, IndexError, UnicodeDecodeError):
            raise MacaroonDenied(
                "verification failed: signature mismatch after caveat verification"
            ) from None
        required = METHOD_PERMISSIONS.get(method)
        if required is None:
            raise MacaroonDenied("permission denied")
        if ("uri", method) in ops:
            return
        for op in required:
            if op not in ops:
                raise MacaroonDenied("permission denied")


def _satisfy_caveat(predicate: str) -> bool:
    # LND's standard first-party caveats; unknown ones fail, as in LND.
    if predicate.startswith("time-before "):
        stamp = predicate[len("time-before ") :].strip()
        try:
            deadline = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return False
        return time.time() < deadline
    return False
