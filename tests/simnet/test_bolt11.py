"""BOLT11 encoding/decoding of simnet's payment requests, and macaroon caveats."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import coincurve
import pytest

from lightningd_py.simnet import bolt11
from lightningd_py.simnet.macaroons import INVOICE_OPS, MacaroonDenied, MacaroonKeeper


@pytest.mark.parametrize(
    ("amount_msat", "prefix"),
    [
        (0, "lnbcrt1"),
        (1, "lnbcrt10p1"),
        (1000, "lnbcrt10n1"),
        (150_000_000, "lnbcrt1500u1"),
        (10**11, "lnbcrt11"),
    ],
)
def test_round_trip_and_amount_units(amount_msat: int, prefix: str) -> None:
    key = coincurve.PrivateKey()
    r_hash, secret = os.urandom(32), os.urandom(32)
    pr = bolt11.encode(
        key=key,
        network="bcrt",
        amount_msat=amount_msat,
        timestamp=1_700_000_000,
        payment_hash=r_hash,
        payment_secret=secret,
        description="café ☕",
        expiry=600,
        min_final_cltv=80,
    )
    assert pr.startswith(prefix)
    got = bolt11.decode(pr)
    assert (got.amount_msat, got.payment_hash, got.payment_secret) == (amount_msat, r_hash, secret)
    assert (got.description, got.expiry, got.min_final_cltv, got.timestamp) == (
        "café ☕",
        600,
        80,
        1_700_000_000,
    )
    assert got.payee == key.public_key.format() and got.feature_bits == (8, 14, 17)


def test_description_hash_and_tampering() -> None:
    key = coincurve.PrivateKey()
    dh = hashlib.sha256(b"long description").digest()
    pr = bolt11.encode(
        key=key,
        network="bcrt",
        amount_msat=5000,
        timestamp=int(time.time()),
        payment_hash=os.urandom(32),
        payment_secret=os.urandom(32),
        description_hash=dh,
    )
    assert bolt11.decode(pr).description_hash == dh
    flipped = pr[:20] + ("q" if pr[20] != "q" else "p") + pr[21:]
    with pytest.raises(bolt11.Bolt11Error, match="checksum"):
        bolt11.decode(flipped)
    with pytest.raises(bolt11.Bolt11Error):
        bolt11.decode("lnbcrt1qqqq")


def test_macaroon_caveats(tmp_path: Path) -> None:
    keeper = MacaroonKeeper(tmp_path)
    method = "/lnrpc.Lightning/AddInvoice"
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    ok = keeper.bake(INVOICE_OPS, caveats=[f"time-before {future}"]).hex()
    keeper.check([("macaroon", ok)], method)
    expired = keeper.bake(INVOICE_OPS, caveats=[f"time-before {past}"]).hex()
    with pytest.raises(MacaroonDenied, match="verification failed"):
        keeper.check([("macaroon", expired)], method)
    with pytest.raises(MacaroonDenied, match="permission denied"):
        keeper.check([("macaroon", ok)], "/lnrpc.Lightning/GetInfo")
    with pytest.raises(MacaroonDenied, match="expected 1 macaroon, got 2"):
        keeper.check([("macaroon", ok), ("macaroon", ok)], method)
    assert (tmp_path / "admin.macaroon").read_bytes()[0] == 2  # binary v2 format, as LND writes it
