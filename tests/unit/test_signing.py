from __future__ import annotations

from datetime import UTC, datetime

import pytest
import standardwebhooks

from webhooks.signing import WebhookVerificationError, generate_secret, sign, sign_headers, verify

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
