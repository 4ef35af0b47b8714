"""Outputs on a modal.Volume mounted in every container, served by the web container.

A Volume shows a container other containers' files only after they `commit()` and it `reload()`s,
and `reload()` fails while the container has a file open on the Volume. So:

- writers commit after each file, before the job can be seen to end (a webhook never points at a
  file that is not yet visible);
- readers take a whole file into memory, never streaming from an open handle, and a lock keeps
  reads, writes and reloads of one container apart: a reload never finds a file open;
- a key not found triggers one reload (coalesced: at most one per `min_reload_interval`), then a
  second look; still missing is a 404.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hidream_service.storage import LocalOutputStorage


class Volume(Protocol):
    """The part of modal.Volume used here."""

    def commit(self) -> None: ...

    def reload(self) -> None: ...


class VolumeOutputStorage(LocalOutputStorage):
    def __init__(
        self,
        root: Path,
        volume: Volume,
        *,
        min_reload_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(root)
        self._volume = volume
        self._lock = threading.Lock()
        self._min_reload_interval = min_reload_interval
        self._clock = clock
        self._last_reload = float("-inf")

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            super().put(key, data)
            self._volume.commit()

    def lookup(self, key: str) -> Path | bytes | None:
        path = self.path_for(key)
        if path is None:
            return None
        with self._lock:
            data = _read(path)
            if data is None and self._clock() - self._last_reload >= self._min_reload_interval:
                self._volume.reload()
                self._last_reload = self._clock()
                data = _read(path)
        return data


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
