from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
import standardwebhooks
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webhooks.signing import (
    WebhookVerificationError,
    fal_sign_headers,
    fal_verify,
    generate_secret,
    jwks,
    public_keys_from_jwks,
    sign,
    sign_headers,
    verify,
    wavespeed_sign,
    wavespeed_sign_headers,
    wavespeed_verify,
)

# The Standard Webhooks specification's own test vector.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_matches_the_spec_test_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_the_reference_library_verifies_our_headers() -> None:
    secret = generate_secret()
    now = int(datetime.now(UTC).timestamp())
    headers = sign_headers([secret], "msg_1", now, b'{"a":1}')

    assert standardwebhooks.Webhook(secret).verify(b'{"a":1}', headers) == {"a": 1}


def test_we_verify_what_the_reference_library_signs() -> None:
    secret = generate_secret()
    stamp = datetime.now(UTC)
    signature = standardwebhooks.Webhook(secret).sign("msg_2", stamp, '{"b":2}')
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(int(stamp.timestamp())), "webhook-signature": signature}

    verify(secret, headers, b'{"b":2}')


def test_rotation_signs_with_every_secret() -> None:
    old, new = generate_secret(), generate_secret()
    headers = sign_headers([old, new], "msg_3", 1000, b"{}")

    verify(old, headers, b"{}", now=1000)
    verify(new, headers, b"{}", now=1000)
    assert len(headers["webhook-signature"].split()) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP)},
        {"webhook-id": SPEC_ID, "webhook-timestamp": "soon", "webhook-signature": SPEC_SIGNATURE},
        {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": "no-comma"},
        {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": "v1,@@@"},
        {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": "v2,abc"},
        {"webhook-id": "msg_other", "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": SPEC_SIGNATURE},
    ],
)
def test_malformed_or_wrong_headers_are_verification_errors(headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError):
        verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


def test_tampered_body_and_stale_timestamp_fail() -> None:
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": SPEC_SIGNATURE}

    verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 299)
    with pytest.raises(WebhookVerificationError):
        verify(SPEC_SECRET, headers, SPEC_BODY + b" ", now=SPEC_TIMESTAMP)
    with pytest.raises(WebhookVerificationError):
        verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 301)
    with pytest.raises(WebhookVerificationError):
        verify("whsec_not*base64", headers, SPEC_BODY, now=SPEC_TIMESTAMP)


def test_generated_secrets_are_whsec_and_random() -> None:
    first, second = generate_secret(), generate_secret()

    assert first.startswith("whsec_") and first != second
    with pytest.raises(ValueError):
        generate_secret(8)


def test_replicate_validates_our_standard_signature() -> None:
    import httpx
    from replicate.webhook import Webhooks, WebhookSigningSecret

    secret = generate_secret()
    body = b'{"id":"p1","status":"succeeded"}'
    headers = sign_headers([secret], "msg_r", int(datetime.now(UTC).timestamp()), body)
    request = httpx.Request("POST", "http://receiver/hook", headers=headers, content=body)

    Webhooks.validate(request=request, secret=WebhookSigningSecret(key=secret), tolerance=300)


def test_fal_signature_verifies_through_the_jwks_only() -> None:
    key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    document = json.dumps(jwks([key.public_key()]))
    headers = fal_sign_headers(key, "req-1", "user-1", 5000, b'{"status":"OK"}')

    fal_verify(public_keys_from_jwks(document), headers, b'{"status":"OK"}', now=5000)
    with pytest.raises(WebhookVerificationError):
        fal_verify(public_keys_from_jwks(document), headers, b'{"status":"ERROR"}', now=5000)
    with pytest.raises(WebhookVerificationError):
        fal_verify([stranger.public_key()], headers, b'{"status":"OK"}', now=5000)
    with pytest.raises(WebhookVerificationError):
        fal_verify(public_keys_from_jwks(document), headers, b'{"status":"OK"}', now=5000 + 301)


@pytest.mark.parametrize(
    "change",
    [
        {"X-Fal-Webhook-Signature": "zz-not-hex"},
        {"X-Fal-Webhook-Timestamp": "later"},
        {"X-Fal-Webhook-User-Id": "someone-else"},
    ],
)
def test_malformed_fal_headers_are_verification_errors(change: dict[str, str]) -> None:
    key = Ed25519PrivateKey.generate()
    headers = {**fal_sign_headers(key, "req", "user", 100, b"{}"), **change}

    with pytest.raises(WebhookVerificationError):
        fal_verify([key.public_key()], headers, b"{}", now=100)


@pytest.mark.parametrize("document", ["not json", "{}", '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "!!"}]}'])
def test_a_bad_jwks_is_a_verification_error(document: str) -> None:
    with pytest.raises(WebhookVerificationError):
        public_keys_from_jwks(document)


def test_wavespeed_v3_uses_the_raw_secret_text_and_hex() -> None:
    secret = "whsec_abc123"
    expected = hmac.new(b"abc123", b"msg.42.{}", hashlib.sha256).hexdigest()

    assert wavespeed_sign(secret, "msg", 42, b"{}") == "v3," + expected
    headers = wavespeed_sign_headers(secret, "msg", 42, b"{}")
    wavespeed_verify(secret, headers, b"{}", now=42)
    with pytest.raises(WebhookVerificationError):
        wavespeed_verify("whsec_other", headers, b"{}", now=42)
    with pytest.raises(WebhookVerificationError):
        wavespeed_verify(secret, {**headers, "webhook-signature": "v1,xyz"}, b"{}", now=42)
