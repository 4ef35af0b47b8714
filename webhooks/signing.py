"""Standard Webhooks v1 signing and verification: pure functions, no I/O.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``, the signature is
``v1,<base64 HMAC-SHA256>``, and a ``webhook-signature`` header may hold several space-separated
signatures while a secret is being rotated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(Exception):
    """The webhook could not be verified: missing or malformed headers, stale timestamp, bad signature."""


def generate_secret(num_bytes: int = 32) -> str:
    """A new random `whsec_` secret (the spec asks for 24 to 64 bytes)."""
    if not 24 <= num_bytes <= 64:
        raise ValueError("a webhook secret has 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(num_bytes)).decode()


def secret_bytes(secret: str) -> bytes:
    """The key bytes of a `whsec_...` secret."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not valid base64 after the whsec_ prefix") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_headers(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every given secret (old and new while rotating)."""
    signatures = " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets_)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signatures}


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise WebhookVerificationError unless one of the signatures matches; never anything else."""
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        raw_timestamp = lowered["webhook-timestamp"]
        raw_signatures = lowered["webhook-signature"]
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from None
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance window")
    try:
        expected = sign(secret, msg_id, timestamp, body).encode()
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from None
    for candidate in raw_signatures.split():
        version, _, _signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(candidate.encode(), expected):
            return
    raise WebhookVerificationError("no matching signature")
