"""Signatures checked with the standardwebhooks library, not with our own code."""

from __future__ import annotations

import base64
import time

import pytest
from lightningd_py.plugins.webhooks.signing import SigningKey, generate_secret, message_id, sign_headers
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def test_signature_verifies_with_the_reference_library() -> None:
    secret = generate_secret()
    body = b'{"type":"payment.confirmed","timestamp":"2026-01-01T00:00:00.000000Z","data":{"a":1}}'
    headers = sign_headers("msg_1", int(time.time()), body, [SigningKey.parse(secret)])
    assert Webhook(secret).verify(body, headers) == {
        "type": "payment.confirmed",
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "data": {"a": 1},
    }


def test_tampered_body_or_other_secret_fails() -> None:
    secret = generate_secret()
    body = b'{"data":{}}'
    headers = sign_headers("msg_1", int(time.time()), body, [SigningKey.parse(secret)])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"data":{"x":1}}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)


def test_two_secrets_each_verify() -> None:
    old, new = generate_secret(), generate_secret()
    body = b"{}"
    headers = sign_headers("msg_2", int(time.time()), body, [SigningKey.parse(new), SigningKey.parse(old)])
    assert headers["webhook-signature"].count("v1,") == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_message_id_is_stable_per_event_and_endpoint() -> None:
    assert message_id("event:7", "shop") == message_id("event:7", "shop")
    assert message_id("event:7", "shop") != message_id("event:7", "erp")
    assert message_id("event:7", "shop") != message_id("event:8", "shop")
    assert message_id("event:7", "shop").startswith("msg_")


@pytest.mark.parametrize(
    "text",
    ["", "hunter2hunter2", "whsec_", "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_bad_secrets_are_rejected_without_echoing_them(text: str) -> None:
    with pytest.raises(ValueError) as info:
        SigningKey.parse(text)
    if text.removeprefix("whsec_"):
        assert text.removeprefix("whsec_") not in str(info.value)


def test_key_repr_hides_the_key() -> None:
    secret = generate_secret()
    assert secret[6:] not in repr(SigningKey.parse(secret))
