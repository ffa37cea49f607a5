"""Credentials: macaroon as path or hex, tls.cert read fresh, lndconnect URIs."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lightningd_py.errors import ConfigError
from lightningd_py.lnd.credentials import (
    LndConnectURI,
    load_credentials,
    load_macaroon,
    load_tls_cert,
    parse_lndconnect,
    read_macaroon,
    resolve_host,
)

MACAROON = bytes.fromhex("0201036c6e6402f801030a10") + bytes(range(40))


@dataclass
class Settings:
    host: str = "127.0.0.1:10009"
    tls_cert: Path | None = None
    macaroon: str | None = None
    lndconnect: str | None = None
    connect_timeout: float = 5.0
    rpc_timeout: float = 5.0
    reconnect_min: float = 0.1
    reconnect_max: float = 1.0
    keepalive_interval: float = 60.0
    max_receive_mb: int = 50


def _cert_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# ---------------------------------------------------------------- macaroon


def test_macaroon_from_file(tmp_path: Path) -> None:
    path = tmp_path / "admin.macaroon"
    path.write_bytes(MACAROON)
    assert read_macaroon(str(path)) == MACAROON


def test_macaroon_from_hex_either_case() -> None:
    assert read_macaroon(MACAROON.hex()) == MACAROON
    assert read_macaroon(MACAROON.hex().upper()) == MACAROON


def test_long_hex_macaroon_longer_than_a_file_name() -> None:
    long = MACAROON * 10
    assert len(long.hex()) > 255
    assert read_macaroon(long.hex()) == long
    with pytest.raises(ConfigError, match="not shown"):
        read_macaroon("z" + long.hex())


def test_macaroon_file_is_read_again_each_time(tmp_path: Path) -> None:
    path = tmp_path / "admin.macaroon"
    path.write_bytes(MACAROON)
    settings = Settings(macaroon=str(path))
    assert load_macaroon(settings) == MACAROON
    path.write_bytes(b"\x02rebaked")
    assert load_macaroon(settings) == b"\x02rebaked"


def test_missing_macaroon_file_names_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.macaroon"
    with pytest.raises(ConfigError) as info:
        read_macaroon(str(missing))
    assert "lnd.macaroon" in str(info.value)
    assert str(missing) in str(info.value)


def test_odd_hex_is_an_error_without_echoing_the_value() -> None:
    value = MACAROON.hex()[:-1]
    with pytest.raises(ConfigError) as info:
        read_macaroon(value)
    assert "lnd.macaroon" in str(info.value)
    assert value not in str(info.value)


def test_neither_hex_nor_file_is_an_error_without_echoing_the_value() -> None:
    value = "zz" + MACAROON.hex()
    with pytest.raises(ConfigError) as info:
        read_macaroon(value)
    assert "lnd.macaroon" in str(info.value)
    assert "hex" in str(info.value)
    assert value not in str(info.value)


def test_empty_macaroon_file_and_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty.macaroon"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"lnd\.macaroon: .* is empty"):
        read_macaroon(str(empty))
    with pytest.raises(ConfigError, match=r"lnd\.macaroon: .* is a directory"):
        read_macaroon(str(tmp_path) + "/")


def test_macaroon_not_set_anywhere() -> None:
    with pytest.raises(ConfigError, match=r"lnd\.macaroon: not set"):
        load_macaroon(Settings())


# ---------------------------------------------------------------- tls.cert


def test_tls_cert_pem_read_fresh(tmp_path: Path) -> None:
    path = tmp_path / "tls.cert"
    first = ssl.DER_cert_to_PEM_cert(_cert_der()).encode()
    path.write_bytes(first)
    settings = Settings(tls_cert=path)
    assert load_tls_cert(settings) == first
    second = ssl.DER_cert_to_PEM_cert(_cert_der()).encode()
    path.write_bytes(second)  # LND regenerated it
    assert load_tls_cert(settings) == second


def test_tls_cert_der_file_becomes_pem(tmp_path: Path) -> None:
    der = _cert_der()
    path = tmp_path / "tls.der"
    path.write_bytes(der)
    pem = load_tls_cert(Settings(tls_cert=path))
    assert pem is not None
    assert ssl.PEM_cert_to_DER_cert(pem.decode()) == der


def test_tls_cert_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lnd\.tls_cert: no such file"):
        load_tls_cert(Settings(tls_cert=tmp_path / "missing.cert"))
    junk = tmp_path / "junk.cert"
    junk.write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match=r"lnd\.tls_cert: .* not a PEM or DER certificate"):
        load_tls_cert(Settings(tls_cert=junk))


def test_no_tls_cert_means_system_roots() -> None:
    assert load_tls_cert(Settings(macaroon=MACAROON.hex())) is None


# ---------------------------------------------------------------- lndconnect


def test_lndconnect_full() -> None:
    der = _cert_der()
    uri = f"lndconnect://node.example.com:10019?cert={_b64url(der)}&macaroon={_b64url(MACAROON)}"
    parsed = parse_lndconnect(uri)
    assert parsed.host == "node.example.com:10019"
    assert parsed.macaroon == MACAROON
    assert parsed.cert_pem is not None
    assert ssl.PEM_cert_to_DER_cert(parsed.cert_pem.decode()) == der


def test_lndconnect_without_cert_and_default_port() -> None:
    parsed = parse_lndconnect(f"lndconnect://10.0.0.5?macaroon={_b64url(MACAROON)}")
    assert parsed == LndConnectURI(host="10.0.0.5:10009", cert_pem=None, macaroon=MACAROON)


def test_lndconnect_ipv6_host() -> None:
    parsed = parse_lndconnect(f"lndconnect://[::1]:10009?macaroon={_b64url(MACAROON)}")
    assert parsed.host == "[::1]:10009"


def test_lndconnect_accepts_standard_base64_percent_encoded() -> None:
    standard = base64.b64encode(MACAROON).decode()
    encoded = standard.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    parsed = parse_lndconnect(f"lndconnect://h:1?macaroon={encoded}")
    assert parsed.macaroon == MACAROON


def test_lndconnect_cert_may_be_pem_text() -> None:
    pem = ssl.DER_cert_to_PEM_cert(_cert_der()).encode()
    parsed = parse_lndconnect(f"lndconnect://h:1?cert={_b64url(pem)}&macaroon={_b64url(MACAROON)}")
    assert parsed.cert_pem == pem


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://h:1?macaroon=AA", "starting with lndconnect://"),
        ("lndconnect://?macaroon=AA", "host is missing"),
        ("lndconnect://h:99999?macaroon=AA", "port must be"),
        ("lndconnect://h:1?macaroon=***", "macaroon parameter is not valid base64url"),
        ("lndconnect://h:1?cert=AAAA&macaroon=AA", "cert parameter is not a DER certificate"),
    ],
)
def test_lndconnect_errors_name_the_key_and_never_quote_the_uri(uri: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_lndconnect(uri)
    message = str(info.value)
    assert message.startswith("lnd.lndconnect: ")
    assert expected in message
    assert uri not in message
    assert uri.partition("?")[2] not in message


def test_repr_never_shows_the_macaroon() -> None:
    parsed = parse_lndconnect(f"lndconnect://h:1?macaroon={_b64url(MACAROON)}")
    creds = load_credentials(Settings(macaroon=MACAROON.hex()))
    for text in (repr(parsed), str(parsed), repr(creds), str(creds)):
        assert MACAROON.hex() not in text
        assert _b64url(MACAROON) not in text
        assert "redacted" in text


# ---------------------------------------------------------------- precedence


def test_lndconnect_supplies_host_cert_and_macaroon() -> None:
    der = _cert_der()
    settings = Settings(
        lndconnect=f"lndconnect://192.0.2.1:10009?cert={_b64url(der)}&macaroon={_b64url(MACAROON)}"
    )
    creds = load_credentials(settings)
    assert creds.host == "192.0.2.1:10009"
    assert creds.macaroon == MACAROON
    assert creds.tls_cert is not None


def test_explicit_settings_override_the_uri(tmp_path: Path) -> None:
    cert_path = tmp_path / "tls.cert"
    pem = ssl.DER_cert_to_PEM_cert(_cert_der()).encode()
    cert_path.write_bytes(pem)
    other = b"\x02other"
    settings = Settings(
        tls_cert=cert_path,
        macaroon=other.hex(),
        lndconnect=f"lndconnect://192.0.2.1:10009?cert={_b64url(_cert_der())}&macaroon={_b64url(MACAROON)}",
    )
    creds = load_credentials(settings)
    assert creds.tls_cert == pem
    assert creds.macaroon == other
    assert resolve_host(settings) == "192.0.2.1:10009"


def test_uri_without_macaroon_needs_lnd_macaroon() -> None:
    with pytest.raises(ConfigError, match=r"lnd\.lndconnect: the URI has no macaroon"):
        load_macaroon(Settings(lndconnect="lndconnect://h:1"))
