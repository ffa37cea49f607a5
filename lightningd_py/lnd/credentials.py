"""LND credentials from the ``[lnd]`` settings: where LND is, its TLS certificate, and
the macaroon.

The macaroon may be given as a file path or as a hex string, or everything may come
from one ``lndconnect://`` URI. Files are read every time credentials are loaded,
because LND regenerates tls.cert (and a macaroon may be re-baked) while the daemon
runs; the link loads them afresh on every (re)connect.

Macaroon bytes never appear in a repr, a log line or an exception message.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError

__all__ = [
    "DEFAULT_PORT",
    "LndConnectURI",
    "LndCredentials",
    "LndSettingsLike",
    "load_credentials",
    "load_macaroon",
    "load_tls_cert",
    "parse_lndconnect",
    "read_macaroon",
    "resolve_host",
]

DEFAULT_PORT = 10009

_HEX = re.compile(r"[0-9a-fA-F]+")


class LndSettingsLike(Protocol):
    """The ``[lnd]`` settings the LND link reads (``lightningd_py.config``'s model)."""

    host: str
    tls_cert: Path | None
    macaroon: str | None
    lndconnect: str | None
    connect_timeout: float
    rpc_timeout: float
    reconnect_min: float
    reconnect_max: float
    keepalive_interval: float
    max_receive_mb: int


@dataclass(frozen=True, slots=True)
class LndConnectURI:
    """What an ``lndconnect://`` URI holds.

    :ivar host: ``host:port`` (the port defaults to 10009).
    :ivar cert_pem: LND's certificate as PEM, or None when the URI has none (a node
        with a CA-signed certificate).
    :ivar macaroon: the macaroon bytes, or None when the URI has none.
    """

    host: str
    cert_pem: bytes | None = None
    macaroon: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"LndConnectURI(host={self.host!r}, cert={'yes' if self.cert_pem else 'no'}, "
            f"macaroon={'<redacted>' if self.macaroon else 'no'})"
        )


@dataclass(frozen=True, slots=True)
class LndCredentials:
    """Everything needed to open a channel to LND.

    :ivar host: the gRPC target, ``host:port``.
    :ivar tls_cert: PEM bytes of the certificate to trust, or None to trust the system's
        certificate authorities.
    :ivar macaroon: the macaroon bytes (sent hex-encoded in the ``macaroon`` header).
    """

    host: str
    tls_cert: bytes | None
    macaroon: bytes = field(repr=False)

    @property
    def macaroon_hex(self) -> str:
        return self.macaroon.hex()

    def __repr__(self) -> str:
        return (
            f"LndCredentials(host={self.host!r}, tls_cert={'pinned' if self.tls_cert else 'system CAs'}, "
            "macaroon=<redacted>)"
        )


def _b64decode(value: str, key: str, what: str) -> bytes:
    """Decode base64url (the lndconnect spec) or standard base64, padding optional."""
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{key}: the {what} parameter is not valid base64url") from None


def _split_host(netloc: str, key: str) -> str:
    if not netloc:
        raise ConfigError(f"{key}: the host is missing (expected lndconnect://HOST:PORT?...)")
    if netloc.startswith("["):
        close = netloc.find("]")
        if close < 0:
            raise ConfigError(f"{key}: unbalanced '[' in the IPv6 host")
        host, rest = netloc[: close + 1], netloc[close + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif netloc.count(":") == 1:
        host, port_text = netloc.split(":")
    else:
        host, port_text = netloc, ""
    if not port_text:
        return f"{host}:{DEFAULT_PORT}"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{key}: the port must be a number from 1 to 65535")
    return f"{host}:{int(port_text)}"


def parse_lndconnect(uri: str, key: str = "lnd.lndconnect") -> LndConnectURI:
    """Parse ``lndconnect://host:port?cert=<base64url DER>&macaroon=<base64url>``.

    ``cert`` may be absent (CA-signed certificate); it may also hold a PEM text, which
    some generators emit. Errors name ``key`` and never quote the URI, which holds the
    macaroon.
    """
    text = uri.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ConfigError(f"{key}: not a valid lndconnect:// URI") from None
    if parts.scheme.lower() != "lndconnect":
        raise ConfigError(f"{key}: expected a URI starting with lndconnect://")
    host = _split_host(parts.netloc, key)
    params: dict[str, str] = {}
    for piece in parts.query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        # unquote, not unquote_plus: standard base64 may hold '+'.
        params[unquote(name)] = unquote(value)
    cert_pem: bytes | None = None
    if params.get("cert"):
        raw = _b64decode(params["cert"], key, "cert")
        if raw.lstrip().startswith(b"-----BEGIN"):
            cert_pem = raw
        else:
            cert_pem = _der_to_pem(raw)
            if cert_pem is None:
                raise ConfigError(f"{key}: the cert parameter is not a DER certificate")
    macaroon = _b64decode(params["macaroon"], key, "macaroon") if params.get("macaroon") else None
    if macaroon is not None and not macaroon:
        macaroon = None
    return LndConnectURI(host=host, cert_pem=cert_pem, macaroon=macaroon)


def _der_to_pem(der: bytes) -> bytes | None:
    """PEM for a DER certificate, or None when the bytes are not one."""
    # Imported here: only lndconnect URIs need it, and it costs ~10 MB resident.
    from cryptography import x509

    try:
        x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return ssl.DER_cert_to_PEM_cert(der).encode()


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith("~") or value.endswith(".macaroon")


def _is_file(text: str) -> bool:
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError):
        # A macaroon's hex is longer than any file name may be.
        return False


def read_macaroon(value: str, key: str = "lnd.macaroon") -> bytes:
    """The macaroon bytes from a file path or a hex string.

    A value made only of hex digits is taken as hex unless a file of that name exists.
    Errors name ``key``; they quote the value only when it is a path.
    """
    text = value.strip()
    if not text:
        raise ConfigError(f"{key}: empty; expected a macaroon file path or a hex string")
    if _HEX.fullmatch(text) and not _looks_like_path(text) and not _is_file(text):
        if len(text) % 2:
            raise ConfigError(f"{key}: the hex string has an odd number of digits")
        return bytes.fromhex(text)
    path = Path(text).expanduser()
    if not _looks_like_path(text) and not _is_file(text):
        # Neither hex nor an existing file: it may be a mistyped secret, so not quoted.
        raise ConfigError(f"{key}: neither an existing file nor a hex string (value not shown)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key}: no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a directory, expected a macaroon file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise ConfigError(f"{key}: {path} is empty")
    return data


def _read_cert(path: Path, key: str = "lnd.tls_cert") -> bytes:
    path = path.expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key}: no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a directory, expected LND's tls.cert") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" in data:
        return data
    # A DER file works too; gRPC wants PEM.
    pem = _der_to_pem(data)
    if pem is None:
        raise ConfigError(f"{key}: {path} is not a PEM or DER certificate")
    return pem


def _uri(settings: LndSettingsLike) -> LndConnectURI | None:
    return parse_lndconnect(settings.lndconnect) if settings.lndconnect else None


def resolve_host(settings: LndSettingsLike) -> str:
    """The gRPC target: the lndconnect URI's host when one is set, else ``lnd.host``."""
    uri = _uri(settings)
    return uri.host if uri is not None else settings.host


def load_tls_cert(settings: LndSettingsLike) -> bytes | None:
    """PEM bytes read now from ``lnd.tls_cert``, else the lndconnect URI's cert, else
    None (trust the system's certificate authorities)."""
    if settings.tls_cert is not None:
        return _read_cert(Path(settings.tls_cert))
    uri = _uri(settings)
    return uri.cert_pem if uri is not None else None


def load_macaroon(settings: LndSettingsLike) -> bytes:
    """Macaroon bytes from ``lnd.macaroon`` (path or hex, read now), else from the
    lndconnect URI."""
    if settings.macaroon:
        return read_macaroon(settings.macaroon)
    uri = _uri(settings)
    if uri is not None:
        if uri.macaroon is None:
            raise ConfigError("lnd.lndconnect: the URI has no macaroon parameter and lnd.macaroon is not set")
        return uri.macaroon
    raise ConfigError("lnd.macaroon: not set; expected a macaroon file path, a hex string, or lnd.lndconnect")


def load_credentials(settings: LndSettingsLike) -> LndCredentials:
    """Host, certificate and macaroon, files read now. Explicit ``lnd.tls_cert`` and
    ``lnd.macaroon`` take precedence over what an lndconnect URI carries.

    :raises ConfigError: naming the setting at fault.
    """
    return LndCredentials(
        host=resolve_host(settings),
        tls_cert=load_tls_cert(settings),
        macaroon=load_macaroon(settings),
    )
