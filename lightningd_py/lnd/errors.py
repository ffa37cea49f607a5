"""Turn gRPC failures from LND into ``LndError`` with a kind the daemon can act on.

LND reports most conditions with status UNKNOWN and a text message: a locked wallet,
a server still starting, and even macaroon failures ("permission denied",
"verification failed") arrive that way rather than as UNAUTHENTICATED. So the kind
is decided by the status code first and by LND's wording second.
"""

from __future__ import annotations

import re

import grpc

from ..errors import LndError

__all__ = ["KINDS", "classify", "connection_reason", "redact", "unreachable"]

KINDS: tuple[str, ...] = (
    "unreachable",
    "locked",
    "starting",
    "permission",
    "not_found",
    "invalid",
    "timeout",
    "other",
)

# Lower-case fragments of LND's own messages, checked in this order.
_TEXT_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("locked", ("wallet locked", "wallet is locked", "unlock it to enable full rpc access")),
    (
        "starting",
        (
            "in the process of starting up",
            "not yet ready",
            "waiting to start",
            "rpc server is not active",
            "server is still starting",
        ),
    ),
    (
        "permission",
        (
            "permission denied",
            "verification failed",
            "expected 1 macaroon",
            "cannot get macaroon",
            "invalid macaroon",
            "macaroon not",
            "unable to decode macaroon",
        ),
    ),
    (
        "not_found",
        (
            "unable to locate invoice",
            "there are no existing invoices",
            "unable to find node",
            "not found",
            "unable to find",
        ),
    ),
    (
        "invalid",
        (
            "invalid",
            "unable to decode",
            "decode",
            "checksum failed",
            "malformed",
            "must be",
            "already exists",
            "encoding/hex",
            "hash mismatch",
        ),
    ),
)

_CODE_KINDS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "unreachable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
    grpc.StatusCode.OUT_OF_RANGE: "invalid",
    grpc.StatusCode.ALREADY_EXISTS: "invalid",
    grpc.StatusCode.UNAUTHENTICATED: "permission",
    grpc.StatusCode.PERMISSION_DENIED: "permission",
}

# A macaroon is a few hundred bytes; its hex or base64 form is a long unbroken run.
# Payment hashes (64 hex) and bech32 payment requests (one letter case) stay readable.
_LONG_HEX = re.compile(r"[0-9a-fA-F]{100,}")
_LONG_B64 = re.compile(r"[A-Za-z0-9+/_=-]{100,}")

# Fragments of gRPC core's connection failure texts, mapped to a short human reason.
_CONNECT_REASONS: tuple[tuple[str, str], ...] = (
    ("connection refused", "connection refused"),
    ("goaway", "LND closed the connection"),
    ("cancelling all calls", "LND closed the connection"),
    ("handshake", "TLS handshake failed (is lnd.tls_cert LND's current tls.cert?)"),
    ("ssl", "TLS handshake failed (is lnd.tls_cert LND's current tls.cert?)"),
    ("certificate", "TLS certificate rejected (is lnd.tls_cert LND's current tls.cert?)"),
    ("name resolution", "host name did not resolve"),
    ("dns", "host name did not resolve"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network is unreachable"),
    ("timed out", "connection timed out"),
    ("deadline", "connection timed out"),
    ("connection reset", "connection reset"),
    ("socket closed", "connection closed"),
    ("channel is closed", "connection closed"),
)


def redact(text: str) -> str:
    """Remove anything that could be a macaroon (long hex or mixed-case base64 runs)."""
    text = _LONG_HEX.sub("<redacted>", text)

    def _b64(match: re.Match[str]) -> str:
        run = match.group(0)
        mixed = any(c.isupper() for c in run) and any(c.islower() for c in run)
        return "<redacted>" if mixed else run

    return _LONG_B64.sub(_b64, text)


def _kind_for(code: grpc.StatusCode, details: str) -> str:
    if code in _CODE_KINDS:
        return _CODE_KINDS[code]
    lowered = details.lower()
    for kind, fragments in _TEXT_KINDS:
        if any(fragment in lowered for fragment in fragments):
            return kind
    if code is grpc.StatusCode.CANCELLED and "channel closed" in lowered:
        return "unreachable"
    return "other"


def classify(exc: grpc.RpcError | BaseException) -> LndError:
    """The ``LndError`` for a failed call; raise it ``from`` the original error.

    Accepts a ``grpc.aio.AioRpcError`` (or any ``grpc.RpcError`` with ``code()`` and
    ``details()``), ``grpc.aio.UsageError`` (the channel was closed under the call),
    ``TimeoutError`` and ``OSError``.
    """
    if isinstance(exc, grpc.aio.UsageError):
        return LndError("UNAVAILABLE", "the connection to LND was closed", "unreachable")
    if isinstance(exc, TimeoutError):
        return LndError("DEADLINE_EXCEEDED", "LND did not answer in time", "timeout")
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    if callable(code_fn) and callable(details_fn):
        code = code_fn()
        details = redact(str(details_fn() or ""))
        code_name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        kind = _kind_for(code, details)
        if kind == "unreachable":
            details = connection_reason(details)
        return LndError(code_name, details or code_name.lower(), kind)
    if isinstance(exc, OSError):
        return LndError("UNAVAILABLE", redact(str(exc)) or type(exc).__name__, "unreachable")
    return LndError("UNKNOWN", redact(str(exc)) or type(exc).__name__, "other")


def connection_reason(details: str) -> str:
    """A short reason for a failed connection, from gRPC core's long message
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:...: Failed to
    connect to remote host: Connection refused" becomes "connection refused")."""
    lowered = details.lower()
    for fragment, reason in _CONNECT_REASONS:
        if fragment in lowered:
            return reason
    return details.strip() or "unavailable"


def unreachable(details: str, kind: str = "unreachable") -> LndError:
    """The error raised for a call made while there is no usable connection to LND."""
    return LndError("UNAVAILABLE", details, kind)
