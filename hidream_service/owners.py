"""Who owns a job: an id made from the API key that created it, never the key itself.

The id is what the database stores with each job and what each key's webhook secret is filed
under. It never leaves the server: what a webhook names is an opaque id derived from it with a
server key (SigningKeys.public_owner_id).
"""

from __future__ import annotations

import hashlib

#: The owner of every job on a server without API keys (the open, single-tenant default).
OPEN = ""


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]
