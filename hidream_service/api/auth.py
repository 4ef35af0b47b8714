"""API keys: `Authorization: Key k` (fal), `Bearer k` (OpenAI) or `Token k` (Replicate).

A job belongs to the key that created it; the owner stored with it is a fingerprint, never the key.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request

ACCEPTED_SCHEMES = ("key", "bearer", "token")


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner(self, request: Request) -> str:
        """The caller's owner id ('' on an open server). Raises 401 for a missing or wrong key."""
        if not self.enabled:
            return ""
        header = request.headers.get("authorization", "")
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() not in ACCEPTED_SCHEMES or not key.strip():
            raise HTTPException(
                401,
                "missing API key: send 'Authorization: Key <key>' (or Bearer / Token)",
                headers={"WWW-Authenticate": "Key"},
            )
        candidate = key.strip().encode()
        # Compare against every key so the time taken does not reveal which one nearly matched.
        matched = False
        for known in self._keys:
            matched |= hmac.compare_digest(candidate, known)
        if not matched:
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Key"})
        return owner_of(candidate.decode())
