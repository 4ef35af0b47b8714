"""This server's keys: a webhook secret per API key, fal's Ed25519 key, and a server key.

They are kept in the data dir (mode 0600) on one machine, and in the database when nodes share
Postgres (Modal included), so every node and container signs and verifies alike.

- Standard Webhooks secrets (`whsec_`), one per API key, as each Replicate account has its own:
  made for every configured key at start-up (or on first use), shown to that key only, rotated by
  it alone. A server without keys has one, as it always had. After a rotation the previous secret
  keeps signing beside the new one for the grace period, so receivers can switch without a gap.
  `HIDREAM_WEBHOOK_SECRET` pins them instead: it is the secret of a server without keys, and each
  key's is derived from it, so no key can compute another's. Rotation is then done by changing it.
- fal's Ed25519 key, one for the server, as fal publishes one JWKS. A rotation publishes the new key
  at once and signs with it only after the grace period: receivers cache the JWKS for up to a day.
- A server key that never leaves the server. It signs storage tokens and upload URLs (rotating a
  webhook secret voids none of them) and makes the opaque user id fal's webhooks carry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from hidream_service.config import Settings
from hidream_service.db.engine import Database, Notice
from hidream_service.owners import OPEN, owner_of
from webhooks.signing import derive_secret, generate_secret, secret_bytes

log = logging.getLogger(__name__)

KEYS_FILE = "webhook_keys.json"
SERVER_KEY_BYTES = 32

State = dict[str, Any]


class SecretPinned(Exception):
    """HIDREAM_WEBHOOK_SECRET fixes the secrets; rotate them by changing that variable."""


class KeyStateStore(Protocol):
    """Where the keys live. Every process of one deployment must see the same state."""

    def load_or_create(self, fresh: State) -> State:
        """The stored state; or, when there is none yet, store `fresh` and return what was stored
        (with several processes starting at once, one state wins and all of them use it)."""

    def update(self, change: Callable[[State], None]) -> State:
        """Apply `change` to the stored state and store it, with no other writer in between;
        returns the new state."""


class FileKeyState:
    """The state as one JSON file, written atomically with mode 0600. One server owns a data dir
    (it is locked), so a lock in this process keeps writers apart."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def load_or_create(self, fresh: State) -> State:
        with self._lock:
            if self._path.is_file():
                state: State = json.loads(self._path.read_text())
                return state
            self._save(fresh)
            return fresh

    def update(self, change: Callable[[State], None]) -> State:
        with self._lock:
            state: State = json.loads(self._path.read_text())
            change(state)
            self._save(state)
            return state

    def _save(self, state: State) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        partial = self._path.with_name(self._path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=2)
        os.replace(partial, self._path)


class SqlKeyState:
    """The state as one row of the shared database; a change locks the row, and tells the other
    nodes to reload."""

    NAME = "webhook_signing_keys"

    def __init__(self, db: Database) -> None:
        self._db = db

    def load_or_create(self, fresh: State) -> State:
        with self._db.write() as tx:
            tx.run(
                "INSERT INTO shared_state (name, value) VALUES (:name, :value) ON CONFLICT (name) DO NOTHING",
                {"name": self.NAME, "value": json.dumps(fresh)},
            )
            stored = tx.scalar("SELECT value FROM shared_state WHERE name = :name", {"name": self.NAME})
        state: State = json.loads(stored)
        return state

    def update(self, change: Callable[[State], None]) -> State:
        with self._db.write() as tx:
            stored = tx.scalar(
                f"SELECT value FROM shared_state WHERE name = :name{self._db.lock_row}", {"name": self.NAME}
            )
            state: State = json.loads(stored)
            change(state)
            tx.run(
                "UPDATE shared_state SET value = :value WHERE name = :name",
                {"name": self.NAME, "value": json.dumps(state)},
            )
            self._db.notify(tx, Notice.KEYS)
        return state


@dataclass(frozen=True)
class _Loaded:
    """One reading of the state, swapped in whole so that a signer never sees half of a reload."""

    state: State
    fal_keys: tuple[tuple[float, Ed25519PrivateKey], ...]  # (signs from, key), newest first
    token_key: bytes
    alias_key: bytes


class SigningKeys:
    def __init__(
        self,
        where: Path | KeyStateStore,
        *,
        owners: Iterable[str] = (),
        pinned_secret: str | None = None,
        grace_seconds: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`owners`: the owner ids of the configured API keys, each given a secret at once."""
        if pinned_secret is not None:
            secret_bytes(pinned_secret)  # fail at start-up, not at the first webhook
        self._store = FileKeyState(where) if isinstance(where, Path) else where
        self._owners = tuple(owner for owner in owners if owner != OPEN)
        self._pinned = pinned_secret
        self._grace = grace_seconds
        self._clock = clock
        self._reloading = threading.Lock()
        self._swapping = threading.Lock()
        self.reload()

    @classmethod
    def for_settings(cls, settings: Settings, db: Database | None = None) -> SigningKeys:
        """In the shared database when there is one (`db`, on Postgres), else in the data dir."""
        return cls(
            SqlKeyState(db) if db is not None else settings.data_dir / KEYS_FILE,
            owners=[owner_of(key) for key in settings.api_keys],
            pinned_secret=settings.webhook_secret or None,
            grace_seconds=settings.webhook_rotation_grace_seconds,
        )

    def reload(self) -> None:
        """Read the stored state again (another node changed it), first adding what it lacks: a
        secret for a newly configured key, or what this release keeps that earlier ones did not."""
        state = self._store.load_or_create(self._fresh())
        if self._lacking(state):
            self._update(self._complete)
        else:
            self._use(state)

    # -- Standard Webhooks, per API key ----------------------------------------------------------

    def webhook_secret(self, owner: str) -> str:
        """The owner's current secret, made on first use: may write the state, so call it off the
        event loop."""
        if self._pinned is not None:
            return self._pinned_secret(owner)
        state = self._loaded.state
        entries = self._entries(state, owner)
        if entries is None:
            state = self._update(lambda stored: self._add_owner(stored, owner, self._clock()))
            entries = self._entries(state, owner)
            assert entries is not None
        return str(entries[0]["secret"])

    def signing_secrets(self, owner: str) -> list[str]:
        """What signs one attempt of the owner's webhooks: the current secret first, then earlier
        ones inside their grace period. Reads memory only (the deliverer signs on its event loop)."""
        if self._pinned is not None:
            return [self._pinned_secret(owner)]
        now = self._clock()
        return [
            entry["secret"]
            for entry in self._entries_of(owner)
            if entry["retired_at"] is None or now < entry["retired_at"] + self._grace
        ]

    def rotate(self, owner: str) -> tuple[str, float]:
        """Give the owner a new current secret. Returns it and when the previous one stops signing."""
        if self._pinned is not None:
            raise SecretPinned("the webhook secret is set by HIDREAM_WEBHOOK_SECRET; change it there to rotate")
        now = self._clock()

        def change(state: State) -> None:
            entries = self._entries(state, owner) or []
            for entry in entries:
                if entry["retired_at"] is None:
                    entry["retired_at"] = now
            kept = [entry for entry in entries if now < entry["retired_at"] + self._grace]
            self._set_entries(state, owner, [_secret_entry(now), *kept])

        entries = self._entries(self._update(change), owner)
        assert entries is not None
        return str(entries[0]["secret"]), now + self._grace

    def _pinned_secret(self, owner: str) -> str:
        assert self._pinned is not None
        return self._pinned if owner == OPEN else derive_secret(self._pinned, f"api key {owner}")

    def _entries_of(self, owner: str) -> list[dict[str, Any]]:
        entries = self._entries(self._loaded.state, owner)
        if entries is not None:
            return entries
        # No secret for this owner here: a key configured on another node since this one read the
        # state (its attempts verify once the state is read again, soon), or a delivery stored by a
        # release that signed everything with the one secret, which is the open server's.
        self._reload_soon()
        return list(self._loaded.state["standard"])

    @staticmethod
    def _entries(state: State, owner: str) -> list[dict[str, Any]] | None:
        if owner == OPEN:
            return list(state["standard"])
        entries = state.get("keyed", {}).get(owner)
        return None if entries is None else list(entries)

    @staticmethod
    def _set_entries(state: State, owner: str, entries: list[dict[str, Any]]) -> None:
        if owner == OPEN:
            state["standard"] = entries
        else:
            state.setdefault("keyed", {})[owner] = entries

    def _add_owner(self, state: State, owner: str, now: float) -> None:
        if self._entries(state, owner) is None:
            self._set_entries(state, owner, [_secret_entry(now)])

    def _reload_soon(self) -> None:
        if not self._reloading.acquire(blocking=False):
            return

        def run() -> None:
            try:
                self.reload()
            except Exception:
                log.exception("could not read the signing keys again")
            finally:
                self._reloading.release()

        threading.Thread(target=run, name="keys-reload", daemon=True).start()

    # -- fal Ed25519 -----------------------------------------------------------------------------

    @property
    def fal_key(self) -> Ed25519PrivateKey:
        """The key that signs now: the newest one whose time has come."""
        now = self._clock()
        keys = self._loaded.fal_keys
        return next((key for signs_from, key in keys if signs_from <= now), keys[-1][1])

    def fal_public_keys(self) -> list[Ed25519PublicKey]:
        """Every key a receiver may meet: the one signing, one to come, the one it replaced."""
        return [key.public_key() for _, key in self._loaded.fal_keys]

    def rotate_fal_key(self) -> tuple[Ed25519PublicKey, float]:
        """Publish a new key now; it signs from the time returned, one grace period later."""
        now = self._clock()
        signs_from = now + self._grace
        new = _fal_entry(now, signs_from)

        def change(state: State) -> None:
            # Keep the keys that began signing within the grace period and the newest one before
            # those (it may be the one signing); older ones are done. A key still to come never
            # signed: the new one replaces it, so repeated rotations do not grow the JWKS.
            began = sorted((e for e in state["ed25519"] if _signs_from(e) <= now), key=_signs_from, reverse=True)
            recent = [entry for entry in began if _signs_from(entry) > now - self._grace]
            older = began[len(recent) : len(recent) + 1]
            state["ed25519"] = [new, *recent, *older]

        self._update(change)
        return _private_key(new).public_key(), signs_from

    # -- the server key --------------------------------------------------------------------------

    def token_mac(self, message: str) -> str:
        """The proof a storage token or an upload URL carries."""
        return hmac.new(self._loaded.token_key, message.encode(), hashlib.sha256).hexdigest()

    def public_owner_id(self, owner: str) -> str:
        """An opaque id for an owner, for what leaves the server (fal's user id header): the same
        for every webhook of one API key, and nothing a receiver can test a guessed key against."""
        return hmac.new(self._loaded.alias_key, owner.encode(), hashlib.sha256).hexdigest()[:32]

    # -- the stored state ------------------------------------------------------------------------

    def _fresh(self) -> State:
        now = self._clock()
        return {
            "standard": [_secret_entry(now)],
            "keyed": {owner: [_secret_entry(now)] for owner in self._owners},
            "ed25519": [_fal_entry(now, now)],
            "server_key": _random_key(),
        }

    def _lacking(self, state: State) -> bool:
        keyed = state.get("keyed")
        return "server_key" not in state or keyed is None or any(owner not in keyed for owner in self._owners)

    def _complete(self, state: State) -> None:
        now = self._clock()
        state.setdefault("server_key", _random_key())
        if "keyed" not in state:
            # Made by a release that signed every key's webhooks with the one secret. Each key now
            # gets its own, and the shared one signs beside it for the grace period, so receivers
            # keep verifying while their owners fetch the new secret.
            shared = state["standard"][0]["secret"]
            state["keyed"] = {
                owner: [_secret_entry(now), {"secret": shared, "created_at": now, "retired_at": now}]
                for owner in self._owners
            }
        for owner in self._owners:
            self._add_owner(state, owner, now)

    def _update(self, change: Callable[[State], None]) -> State:
        """Change the stored state, numbering each version, and use the result."""

        def numbered(state: State) -> None:
            change(state)
            state["version"] = state.get("version", 0) + 1

        state = self._store.update(numbered)
        self._use(state)
        return state

    def _use(self, state: State) -> None:
        server_key = base64.b64decode(state["server_key"])
        fal_keys = sorted(((_signs_from(entry), _private_key(entry)) for entry in state["ed25519"]), key=_first)
        loaded = _Loaded(
            state=state,
            fal_keys=tuple(reversed(fal_keys)),
            token_key=hmac.new(server_key, b"storage tokens", hashlib.sha256).digest(),
            alias_key=hmac.new(server_key, b"public owner ids", hashlib.sha256).digest(),
        )
        with self._swapping:
            # Threads that changed the state at once may get here in any order: the newest stays.
            current = getattr(self, "_loaded", None)
            if current is None or state.get("version", 0) >= current.state.get("version", 0):
                self._loaded = loaded


def _secret_entry(now: float) -> dict[str, Any]:
    return {"secret": generate_secret(), "created_at": now, "retired_at": None}


def _fal_entry(now: float, signs_from: float) -> dict[str, Any]:
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return {"private_key": base64.b64encode(seed).decode(), "created_at": now, "signs_from": signs_from}


def _signs_from(entry: dict[str, Any]) -> float:
    return float(entry.get("signs_from", entry["created_at"]))  # earlier releases: from its making


def _private_key(entry: dict[str, Any]) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(entry["private_key"]))


def _first(pair: tuple[float, Ed25519PrivateKey]) -> float:
    return pair[0]


def _random_key() -> str:
    return base64.b64encode(secrets.token_bytes(SERVER_KEY_BYTES)).decode()
