"""Standard Webhooks signatures (https://www.standardwebhooks.com/, version v1).

The signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; the signature is
HMAC-SHA256 with the secret's bytes, base64-encoded, sent as ``v1,<signature>``.
Several signatures are separated by spaces, which is how an endpoint with two active
secrets stays verifiable by consumers holding either one during a rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

__all__ = [
    "SECRET_PREFIX",
    "SigningKey",
    "generate_secret",
    "message_id",
    "sign_headers",
]

SECRET_PREFIX = "whsec_"


class SigningKey:
    """A decoded webhook secret. Its repr never shows the key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """Decode a ``whsec_<base64>`` secret.

        :raises ValueError: with a message that never contains the secret.
        """
        text = text.strip()
        if not text.startswith(SECRET_PREFIX):
            raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r} followed by base64")
        try:
            key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"a webhook secret is {SECRET_PREFIX!r} followed by valid base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError("a webhook secret must decode to between 24 and 64 bytes")
        return cls(key)

    def sign(self, content: bytes) -> str:
        """``v1,<base64 HMAC-SHA256>`` of the signed content."""
        digest = hmac.new(self._key, content, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode("ascii")

    def __repr__(self) -> str:
        return "SigningKey(<redacted>)"


def generate_secret() -> str:
    """A new random secret in the ``whsec_`` form (32 bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def message_id(event_key: str, endpoint: str) -> str:
    """The ``webhook-id`` of one event for one endpoint: the same on every attempt,
    after restarts and on manual redelivery, and different per endpoint."""
    digest = hashlib.sha256(f"{event_key}\x00{endpoint}".encode()).hexdigest()
    return "msg_" + digest[:32]


def sign_headers(msg_id: str, timestamp: int, body: bytes, keys: Sequence[SigningKey]) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt.

    :param timestamp: the attempt's time (unix seconds); consumers reject old ones, so
        each retry is signed anew with its own time.
    """
    content = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(key.sign(content) for key in keys),
    }
