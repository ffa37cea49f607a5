"""BOLT11 payment requests: encode (signed with the node key) and decode (recovering the payee).

Simnet's invoices carry real "lnbcrt..." strings so that clients can parse them and DecodePayReq
can recover the signer, exactly as against LND. Encoding is on the hot path of invoice bursts, so
bit packing works on whole integers and the checksum takes two symbols per step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import coincurve

__all__ = ["DEFAULT_CLTV", "DEFAULT_EXPIRY", "Bolt11Error", "DecodedInvoice", "RouteHop", "decode", "encode"]

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
# Lookup of the generator XOR for the top five bits of the checksum state.
_POLY_TABLE = [0] * 32
for _b in range(32):
    _acc = 0
    for _i in range(5):
        if (_b >> _i) & 1:
            _acc ^= _GEN[_i]
    _POLY_TABLE[_b] = _acc
# Two symbols per step: indexed by the checksum's top ten bits (see _polymod).
_M25 = 0x1FFFFFF
_POLY_TABLE2 = []
for _t in range(1024):
    _first = _POLY_TABLE[_t >> 5]
    _POLY_TABLE2.append(((_first & _M25) << 5) ^ _POLY_TABLE[(_t & 31) ^ (_first >> 25)])
# bech32 characters <-> 5-bit values.
_VAL_TO_CHAR = bytes.maketrans(bytes(range(32)), CHARSET.encode())
_CHAR_TO_VAL = {c: i for i, c in enumerate(CHARSET)}

DEFAULT_EXPIRY = 3600
DEFAULT_CLTV = 18
# LND's invoice features: var_onion_optin required (8), payment_secret required (14), MPP optional (17).
INVOICE_FEATURE_BITS = (8, 14, 17)
MSAT_PER_BTC = 100_000_000_000

_TAG_PAYMENT_HASH = 1
_TAG_ROUTE = 3
_TAG_FEATURES = 5
_TAG_EXPIRY = 6
_TAG_FALLBACK = 9
_TAG_DESCRIPTION = 13
_TAG_PAYMENT_SECRET = 16
_TAG_PAYEE = 19
_TAG_DESCRIPTION_HASH = 23
_TAG_CLTV = 24


class Bolt11Error(ValueError):
    """The string is not a valid BOLT11 payment request."""


@dataclass(frozen=True, slots=True)
class DecodedInvoice:
    network: str
    amount_msat: int
    timestamp: int
    payment_hash: bytes
    payee: bytes
    description: str = ""
    description_hash: bytes = b""
    expiry: int = DEFAULT_EXPIRY
    min_final_cltv: int = DEFAULT_CLTV
    payment_secret: bytes = b""
    fallback_addr: str = ""
    feature_bits: tuple[int, ...] = field(default_factory=tuple)
    route_hints: tuple[tuple[RouteHop, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class RouteHop:
    """One hop of an `r` (private route) field: the node, its channel and the policy to use it."""

    pubkey: bytes
    short_channel_id: int
    fee_base_msat: int
    fee_proportional_millionths: int
    cltv_expiry_delta: int

    def pack(self) -> bytes:
        return (
            self.pubkey
            + self.short_channel_id.to_bytes(8, "big")
            + self.fee_base_msat.to_bytes(4, "big")
            + self.fee_proportional_millionths.to_bytes(4, "big")
            + self.cltv_expiry_delta.to_bytes(2, "big")
        )

    @classmethod
    def unpack(cls, raw: bytes) -> RouteHop:
        return cls(
            raw[:33],
            int.from_bytes(raw[33:41], "big"),
            int.from_bytes(raw[41:45], "big"),
            int.from_bytes(raw[45:49], "big"),
            int.from_bytes(raw[49:51], "big"),
        )


def _to5(data: bytes) -> bytes:
    """Bytes -> 5-bit values (zero padded), one value per byte."""
    nbits = len(data) * 8
    groups = -(-nbits // 5)
    n = int.from_bytes(data, "big") << (groups * 5 - nbits)
    return bytes([(n >> shift) & 31 for shift in _shifts(groups)])


_SHIFTS: dict[int, range] = {}


def _shifts(groups: int) -> range:
    r = _SHIFTS.get(groups)
    if r is None:
        r = _SHIFTS[groups] = range(5 * (groups - 1), -1, -5)
    return r


def _from5(values: bytes) -> bytes:
    """5-bit values -> bytes, dropping the incomplete trailing bits."""
    acc = 0
    for v in values:
        acc = (acc << 5) | v
    nbits = len(values) * 5
    nbytes = nbits // 8
    return (acc >> (nbits - nbytes * 8)).to_bytes(nbytes, "big")


def _int5(value: int, width: int = 0) -> bytes:
    out = bytearray()
    while value:
        out.append(value & 31)
        value >>= 5
    while len(out) < width:
        out.append(0)
    return bytes(reversed(out))


def _polymod(values: bytes | list[int], chk: int = 1) -> int:
    """BCH checksum state after `values`; two symbols per iteration (invoice bursts are hot)."""
    table2 = _POLY_TABLE2
    n = len(values)
    for i in range(0, n - 1, 2):
        chk = ((chk & 0xFFFFF) << 10) ^ table2[chk >> 20] ^ (values[i] << 5 | values[i + 1])
    if n % 2:
        chk = ((chk & _M25) << 5) ^ values[-1] ^ _POLY_TABLE[chk >> 25]
    return chk


def _hrp_expand(hrp: str) -> bytes:
    raw = hrp.encode()
    return bytes(c >> 5 for c in raw) + b"\x00" + bytes(c & 31 for c in raw)


def _tagged(tag: int, data5: bytes) -> bytes:
    n = len(data5)
    return bytes((tag, n >> 5, n & 31)) + data5


def _amount_hrp(amount_msat: int) -> str:
    if amount_msat <= 0:
        return ""
    if amount_msat % MSAT_PER_BTC == 0:
        return str(amount_msat // MSAT_PER_BTC)
    for unit, msat in (("m", 100_000_000), ("u", 100_000), ("n", 100)):
        if amount_msat % msat == 0:
            return f"{amount_msat // msat}{unit}"
    return f"{amount_msat * 10}p"


def _features5(bits: tuple[int, ...]) -> bytes:
    value = 0
    for b in bits:
        value |= 1 << b
    return _int5(value)


def encode(
    *,
    key: coincurve.PrivateKey,
    network: str,
    amount_msat: int,
    timestamp: int,
    payment_hash: bytes,
    payment_secret: bytes,
    description: str = "",
    description_hash: bytes = b"",
    expiry: int = DEFAULT_EXPIRY,
    min_final_cltv: int = DEFAULT_CLTV,
    route_hints: tuple[tuple[RouteHop, ...], ...] = (),
) -> str:
    """Build and sign a payment request; `network` is the bech32 prefix part, e.g. "bcrt"."""
    hrp = f"ln{network}{_amount_hrp(amount_msat)}"
    parts = [_int5(timestamp, 7), _tagged(_TAG_PAYMENT_HASH, _to5(payment_hash))]
    if description_hash:
        parts.append(_tagged(_TAG_DESCRIPTION_HASH, _to5(description_hash)))
    else:
        parts.append(_tagged(_TAG_DESCRIPTION, _to5(description.encode())))
    parts.append(_tagged(_TAG_PAYMENT_SECRET, _to5(payment_secret)))
    if expiry != DEFAULT_EXPIRY:
        parts.append(_tagged(_TAG_EXPIRY, _int5(expiry)))
    parts.append(_tagged(_TAG_CLTV, _int5(min_final_cltv)))
    for route in route_hints:
        parts.append(_tagged(_TAG_ROUTE, _to5(b"".join(hop.pack() for hop in route))))
    parts.append(_tagged(_TAG_FEATURES, _features5(INVOICE_FEATURE_BITS)))
    data = b"".join(parts)
    digest = hashlib.sha256(hrp.encode() + _from5_padded(data)).digest()
    sig = key.sign_recoverable(digest, hasher=None)
    data += _to5(sig)
    chk = _polymod(data, _polymod(_hrp_expand(hrp)))
    chk = _polymod(b"\x00" * 6, chk) ^ 1
    checksum = bytes((chk >> 5 * (5 - i)) & 31 for i in range(6))
    return hrp + "1" + (data + checksum).translate(_VAL_TO_CHAR).decode()


def _from5_padded(values: bytes) -> bytes:
    """5-bit values -> bytes, zero-padding the last byte (what BOLT11 signs)."""
    acc = 0
    for v in values:
        acc = (acc << 5) | v
    nbits = len(values) * 5
    pad = (-nbits) % 8
    return (acc << pad).to_bytes((nbits + pad) // 8, "big")


def _parse_amount(text: str) -> int:
    if not text:
        return 0
    unit = text[-1]
    if unit.isdigit():
        return int(text) * MSAT_PER_BTC
    digits = text[:-1]
    if not digits.isdigit():
        raise Bolt11Error(f"invalid amount {text!r}")
    n = int(digits)
    if unit == "m":
        return n * 100_000_000
    if unit == "u":
        return n * 100_000
    if unit == "n":
        return n * 100
    if unit == "p":
        if n % 10:
            raise Bolt11Error("amount has sub-millisatoshi precision")
        return n // 10
    raise Bolt11Error(f"invalid amount multiplier {unit!r}")


def decode(payment_request: str) -> DecodedInvoice:
    """Parse and verify a payment request, recovering the payee when no `n` field is present."""
    pr = payment_request.strip()
    if pr.lower().startswith("lightning:"):
        pr = pr[10:]
    if pr.lower() != pr and pr.upper() != pr:
        raise Bolt11Error("mixed-case payment request")
    pr = pr.lower()
    pos = pr.rfind("1")
    if pos < 3 or len(pr) - pos < 7 + 104 + 6:
        raise Bolt11Error("payment request too short or missing separator")
    hrp = pr[:pos]
    try:
        values = bytes(_CHAR_TO_VAL[c] for c in pr[pos + 1 :])
    except KeyError as exc:
        raise Bolt11Error(f"invalid character {exc.args[0]!r}") from None
    if _polymod(values, _polymod(_hrp_expand(hrp))) != 1:
        raise Bolt11Error("invalid checksum")
    if not hrp.startswith("ln"):
        raise Bolt11Error("human-readable part must start with 'ln'")
    body = hrp[2:]
    network = ""
    for prefix in ("bcrt", "tbs", "tb", "bc", "sb"):
        if body.startswith(prefix):
            network = prefix
            break
    if not network:
        raise Bolt11Error(f"unknown network in {hrp!r}")
    amount_msat = _parse_amount(body[len(network) :])
    data = values[:-6]
    sig5, fields5 = data[-104:], data[:-104]
    sig = _from5(sig5)
    digest = hashlib.sha256(hrp.encode() + _from5_padded(fields5)).digest()
    timestamp = 0
    for v in fields5[:7]:
        timestamp = (timestamp << 5) | v
    out: dict[str, object] = {}
    i = 7
    while i + 3 <= len(fields5):
        tag = fields5[i]
        length = (fields5[i + 1] << 5) | fields5[i + 2]
        chunk = fields5[i + 3 : i + 3 + length]
        i += 3 + length
        if tag == _TAG_PAYMENT_HASH and length == 52:
            out["payment_hash"] = _from5(chunk)
        elif tag == _TAG_PAYMENT_SECRET and length == 52:
            out["payment_secret"] = _from5(chunk)
        elif tag == _TAG_DESCRIPTION:
            out["description"] = _from5(chunk).decode("utf-8", "replace")
        elif tag == _TAG_DESCRIPTION_HASH and length == 52:
            out["description_hash"] = _from5(chunk)
        elif tag == _TAG_ROUTE:
            raw = _from5(chunk)
            route = tuple(RouteHop.unpack(raw[i : i + 51]) for i in range(0, len(raw) - 50, 51))
            out["route_hints"] = (*out.get("route_hints", ()), route)  # type: ignore[misc]
        elif tag == _TAG_PAYEE and length == 53:
            out["payee"] = _from5(chunk)
        elif tag in (_TAG_EXPIRY, _TAG_CLTV, _TAG_FEATURES):
            n = 0
            for v in chunk:
                n = (n << 5) | v
            if tag == _TAG_EXPIRY:
                out["expiry"] = n
            elif tag == _TAG_CLTV:
                out["min_final_cltv"] = n
            else:
                out["feature_bits"] = tuple(b for b in range(n.bit_length()) if n >> b & 1)
    if "payment_hash" not in out:
        raise Bolt11Error("missing payment hash (p) field")
    try:
        recovered = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    except Exception as exc:  # coincurve raises bare Exception/ValueError for bad signatures
        raise Bolt11Error("invalid signature") from exc
    payee = out.pop("payee", None) or recovered.format()
    if payee != recovered.format():
        raise Bolt11Error("signature does not match the payee (n) field")
    return DecodedInvoice(
        network=network,
        amount_msat=amount_msat,
        timestamp=timestamp,
        payee=payee,
        **out,  # type: ignore[arg-type]
    )
