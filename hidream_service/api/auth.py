"""API keys: `Authorization: Key k` (fal), `Bearer k` (OpenAI) or `Token k` (Replicate).

A job belongs to the key that created it; the owner stored with it is a fingerprint, never the key
(owners.py). Admin keys (HIDREAM_ADMIN_KEYS, each also an API key) may also run the server-wide
operations, such as rotating fal's signing key; on a server without keys anyone may.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from fastapi import HTTPException, Request

from hidream_service.owners import OPEN, owner_of

ACCEPTED_SCHEMES = ("key", "bearer", "token")


class ApiKeys:
    def __init__(self, keys: Iterable[str], admin_keys: Iterable[str] = ()) -> None:
        self._keys = [key.encode() for key in keys]
        self._admins = frozenset(owner_of(key) for key in admin_keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner(self, request: Request) -> str:
        """The caller's owner id ('' on an open server). Raises 401 for a missing or wrong key."""
        if not self.enabled:
            return OPEN
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

    def admin(self, request: Request) -> str:
        """The caller's owner id, if it may run server-wide operations. Raises 401 for a missing or
        wrong key, 403 for a key that is not an admin key."""
        owner = self.owner(request)
        if self.enabled and owner not in self._admins:
            raise HTTPException(403, "this operation needs an admin key (HIDREAM_ADMIN_KEYS)")
        return owner
