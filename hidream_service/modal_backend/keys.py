"""Webhook signing state in a modal.Dict, so that every container signs with the same fal key.

The first container to start stores its freshly made state with put-if-absent; every other one
(starting at the same moment included) reads back the winner's.
"""

from __future__ import annotations

from typing import Any

from hidream_service.modal_backend.kv import KeyValueStore

SIGNING_STATE_KEY = "signing-keys"


class DictKeyState:
    def __init__(self, store: KeyValueStore, key: str = SIGNING_STATE_KEY) -> None:
        self._store = store
        self._key = key

    def load_or_create(self, fresh: dict[str, Any]) -> dict[str, Any]:
        self._store.put(self._key, fresh, skip_if_exists=True)
        state: dict[str, Any] = self._store.get(self._key)
        return state

    def save(self, state: dict[str, Any]) -> None:
        self._store.put(self._key, state)
