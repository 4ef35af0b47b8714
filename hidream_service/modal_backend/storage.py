"""Outputs on a modal.Volume mounted in every container, served by the web container.

A Volume shows a container other containers' files only after they `commit()`; a reader would have
to `reload()` its whole view to see them, and a reload fails while any file of it is open. So:

- writers commit after each file, before the job can be seen to end (a webhook never points at a
  file that is not yet visible);
- a reader that does not find a key in its own view fetches that one file from the Volume's server
  (`read_file`), never reloading the view: one image costs one file's transfer, however many files
  the Volume holds.

A cloud bucket mounted instead (CloudBucketMount, through Mountpoint for S3) shows every file to
every container at once, but cannot rename: BucketOutputStorage writes each file in place (an
object appears whole when it is closed).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from hidream_service.storage import LocalOutputStorage


class Volume(Protocol):
    """The part of modal.Volume used here."""

    def commit(self) -> None: ...

    def reload(self) -> None: ...

    def read_file(self, path: str) -> Iterable[bytes]: ...


class VolumeOutputStorage(LocalOutputStorage):
    def __init__(self, root: Path, volume: Volume) -> None:
        super().__init__(root)
        self._volume = volume

    def put(self, key: str, data: bytes) -> None:
        super().put(key, data)
        self._volume.commit()

    def lookup(self, key: str) -> Path | bytes | None:
        path = self.path_for(key)
        if path is None:
            return None
        if path.is_file():
            return path
        try:  # written by another container since this one mounted the Volume
            return b"".join(self._volume.read_file(key))
        except (FileNotFoundError, IsADirectoryError):
            return None


class BucketOutputStorage(LocalOutputStorage):
    def put(self, key: str, data: bytes) -> None:
        path = self.path_for(key)
        if path is None:
            raise ValueError(f"bad storage key {key!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
