"""Webhook signing and verification for three receivers' conventions: pure functions, no I/O.

- Standard Webhooks v1 (Svix, Replicate): HMAC-SHA256 over ``{id}.{timestamp}.{body}`` with the
  base64-decoded ``whsec_`` key, ``webhook-signature: v1,<base64>``; several space-separated
  signatures while a secret is rotated.
- fal: Ed25519 over ``{request_id}\n{user_id}\n{timestamp}\n{sha256 hex of body}`` in the
  ``X-Fal-Webhook-*`` headers; receivers take the public keys from our JWKS.
- WaveSpeed v3: HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed with the text after ``whsec_``
  (not base64-decoded), ``webhook-signature: v3,<hex>``.

Every verifier raises WebhookVerificationError for anything wrong with what it was given, and
nothing else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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


def derive_secret(secret: str, context: str) -> str:
    """A `whsec_` secret of its own for `context`, made from `secret` (HMAC-SHA256): knowing one
    derived secret tells nothing of `secret` or of the secret derived for another context."""
    digest = hmac.new(secret_bytes(secret), b"derived webhook secret\x00" + context.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_headers(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every given secret (old and new while rotating)."""
    signatures = " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets_)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signatures}


def _header_values(headers: Mapping[str, str], *names: str) -> list[str]:
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        return [lowered[name] for name in names]
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from None


def _check_timestamp(raw: str, tolerance_seconds: int, now: float | None) -> int:
    try:
        timestamp = int(raw)
    except ValueError:
        raise WebhookVerificationError("the timestamp header is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("the timestamp is outside the tolerance window")
    return timestamp


def _hmac_headers(headers: Mapping[str, str], tolerance_seconds: int, now: float | None) -> tuple[str, int, str]:
    """webhook-id, a timestamp inside the tolerance, and the signature list (Standard and WaveSpeed)."""
    msg_id, raw_timestamp, raw_signatures = _header_values(
        headers, "webhook-id", "webhook-timestamp", "webhook-signature"
    )
    return msg_id, _check_timestamp(raw_timestamp, tolerance_seconds, now), raw_signatures


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise WebhookVerificationError unless one of the signatures matches; never anything else."""
    msg_id, timestamp, raw_signatures = _hmac_headers(headers, tolerance_seconds, now)
    try:
        expected = sign(secret, msg_id, timestamp, body).encode()
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from None
    for candidate in raw_signatures.split():
        version, _, _signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(candidate.encode(), expected):
            return
    raise WebhookVerificationError("no matching signature")


# -- fal: Ed25519 --------------------------------------------------------------------------------

FAL_HEADERS = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)


def fal_message(request_id: str, user_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def fal_sign_headers(
    key: Ed25519PrivateKey, request_id: str, user_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    signature = key.sign(fal_message(request_id, user_id, timestamp, body)).hex()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": str(timestamp),
        "X-Fal-Webhook-Signature": signature,
    }


def fal_verify(
    public_keys: Iterable[Ed25519PublicKey],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Verify fal-style headers against any of the given public keys (from our JWKS)."""
    request_id, user_id, raw_timestamp, signature_hex = _header_values(headers, *FAL_HEADERS)
    timestamp = _check_timestamp(raw_timestamp, tolerance_seconds, now)
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise WebhookVerificationError("x-fal-webhook-signature is not hex") from None
    message = fal_message(request_id, user_id, timestamp, body)
    for key in public_keys:
        try:
            key.verify(signature, message)
            return
        except InvalidSignature:
            continue
    raise WebhookVerificationError("no key in the JWKS verifies this signature")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _b64url(hashlib.sha256(raw).digest()[:12])


def jwks(public_keys: Iterable[Ed25519PublicKey]) -> dict[str, Any]:
    """A JSON Web Key Set of Ed25519 public keys (RFC 8037 OKP keys)."""
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": _b64url(key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
                "kid": key_id(key),
                "use": "sig",
                "alg": "EdDSA",
            }
            for key in public_keys
        ]
    }


def public_keys_from_jwks(document: str | bytes | Mapping[str, Any]) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document; other kinds of key are skipped."""
    try:
        parsed = json.loads(document) if isinstance(document, str | bytes) else document
        keys = []
        for entry in parsed["keys"]:
            if entry.get("kty") == "OKP" and entry.get("crv") == "Ed25519":
                raw = base64.urlsafe_b64decode(entry["x"] + "=" * (-len(entry["x"]) % 4))
                keys.append(Ed25519PublicKey.from_public_bytes(raw))
        return keys
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WebhookVerificationError(f"not a usable JWKS document: {exc}") from None


# -- WaveSpeed v3 ---------------------------------------------------------------------------------


def wavespeed_sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v3,<hex>`: keyed with the secret's text after `whsec_`, as WaveSpeed documents it."""
    key = secret.removeprefix(SECRET_PREFIX).encode()
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return "v3," + digest


def wavespeed_sign_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": wavespeed_sign(secret, msg_id, timestamp, body),
    }


def wavespeed_verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    msg_id, timestamp, raw_signatures = _hmac_headers(headers, tolerance_seconds, now)
    expected = wavespeed_sign(secret, msg_id, timestamp, body).encode()
    for candidate in raw_signatures.split():
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise WebhookVerificationError("no matching signature")
