"""This server's webhook signing material: in the data dir (mode 0600) on one machine, in the
database when nodes share Postgres (every node signs and verifies alike), or on Modal in a
modal.Dict shared by every container (modal_backend.keys).

- Standard Webhooks secrets (`whsec_`): the current one signs every webhook; after a rotation the
  previous one keeps signing beside it for a grace period, so receivers can switch without a gap.
  `HIDREAM_WEBHOOK_SECRET` pins the secret instead (rotation is then done by changing it).
- An Ed25519 key for fal-style signatures; its public half is served as JWKS.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from hidream_service.config import Settings
from hidream_service.db.engine import Database, Notice
from webhooks.signing import generate_secret, secret_bytes

KEYS_FILE = "webhook_keys.json"


class SecretPinned(Exception):
    """HIDREAM_WEBHOOK_SECRET fixes the secret; rotate it by changing that variable."""


class KeyStateStore(Protocol):
    """Where the signing state lives. Every process of one deployment must see the same state."""

    def load_or_create(self, fresh: dict[str, Any]) -> dict[str, Any]:
        """The stored state; or, when there is none yet, store `fresh` and return what was stored
        (with several processes starting at once, one state wins and all of them use it)."""

    def save(self, state: dict[str, Any]) -> None: ...


class FileKeyState:
    """The state as one JSON file, written atomically with mode 0600."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load_or_create(self, fresh: dict[str, Any]) -> dict[str, Any]:
        if self._path.is_file():
            state: dict[str, Any] = json.loads(self._path.read_text())
            return state
        self.save(fresh)
        return fresh

    def save(self, state: dict[str, Any]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        partial = self._path.with_name(self._path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=2)
        os.replace(partial, self._path)


class SqlKeyState:
    """The state as one row of the shared database; saving it tells the other nodes to reload."""

    NAME = "webhook_signing_keys"

    def __init__(self, db: Database) -> None:
        self._db = db

    def load_or_create(self, fresh: dict[str, Any]) -> dict[str, Any]:
        with self._db.write() as tx:
            tx.run(
                "INSERT INTO shared_state (name, value) VALUES (:name, :value) ON CONFLICT (name) DO NOTHING",
                {"name": self.NAME, "value": json.dumps(fresh)},
            )
            stored = tx.scalar("SELECT value FROM shared_state WHERE name = :name", {"name": self.NAME})
        state: dict[str, Any] = json.loads(stored)
        return state

    def save(self, state: dict[str, Any]) -> None:
        with self._db.write() as tx:
            tx.run(
                "UPDATE shared_state SET value = :value WHERE name = :name",
                {"name": self.NAME, "value": json.dumps(state)},
            )
            self._db.notify(tx, Notice.KEYS)


class SigningKeys:
    def __init__(
        self,
        where: Path | KeyStateStore,
        *,
        pinned_secret: str | None = None,
        grace_seconds: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if pinned_secret is not None:
            secret_bytes(pinned_secret)  # fail at start-up, not at the first webhook
        self._store = FileKeyState(where) if isinstance(where, Path) else where
        self._pinned = pinned_secret
        self._grace = grace_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.reload()

    @classmethod
    def for_settings(cls, settings: Settings, db: Database | None = None) -> SigningKeys:
        """In the shared database when there is one (`db`, on Postgres), else in the data dir."""
        return cls(
            SqlKeyState(db) if db is not None else settings.data_dir / KEYS_FILE,
            pinned_secret=settings.webhook_secret or None,
            grace_seconds=settings.webhook_rotation_grace_seconds,
        )

    def reload(self) -> None:
        """Read the stored state again (another node rotated the secret)."""
        state = self._load_or_create()
        seed = base64.b64decode(state["ed25519"][0]["private_key"])
        self._state, self._fal_key = state, Ed25519PrivateKey.from_private_bytes(seed)

    # -- Standard Webhooks -----------------------------------------------------------------------

    @property
    def current_secret(self) -> str:
        if self._pinned is not None:
            return self._pinned
        return str(self._state["standard"][0]["secret"])

    def signing_secrets(self) -> list[str]:
        """The current secret first, then earlier ones still inside their grace period."""
        if self._pinned is not None:
            return [self._pinned]
        now = self._clock()
        return [
            entry["secret"]
            for entry in self._state["standard"]
            if entry["retired_at"] is None or now < entry["retired_at"] + self._grace
        ]

    def rotate(self) -> tuple[str, float]:
        """Make a new current secret. Returns it and when the previous one stops signing."""
        if self._pinned is not None:
            raise SecretPinned("the webhook secret is set by HIDREAM_WEBHOOK_SECRET; change it there to rotate")
        with self._lock:
            self.reload()  # another node may have rotated since
            now = self._clock()
            previous = self._state["standard"]
            previous[0]["retired_at"] = now
            kept = [entry for entry in previous if now < entry["retired_at"] + self._grace]
            self._state["standard"] = [{"secret": generate_secret(), "created_at": now, "retired_at": None}, *kept]
            self._store.save(self._state)
        return self.current_secret, now + self._grace

    # -- fal Ed25519 -----------------------------------------------------------------------------

    @property
    def fal_key(self) -> Ed25519PrivateKey:
        return self._fal_key

    def fal_public_keys(self) -> list[Ed25519PublicKey]:
        return [self._fal_key.public_key()]

    # -- storage ---------------------------------------------------------------------------------

    def _load_or_create(self) -> dict[str, Any]:
        now = self._clock()
        seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        fresh = {
            "standard": [{"secret": generate_secret(), "created_at": now, "retired_at": None}],
            "ed25519": [{"private_key": base64.b64encode(seed).decode(), "created_at": now}],
        }
        return self._store.load_or_create(fresh)
