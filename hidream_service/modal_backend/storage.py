"""Outputs on a modal.Volume mounted in every container, served by the web container; LoRA files on
another, the same way (VolumeLoraCache, at the end).

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

from hidream_service.inference.lora_cache import LoraCache
from hidream_service.storage import LocalOutputStorage


class Volume(Protocol):
    """The part of modal.Volume used here."""

    def commit(self) -> None: ...

    def reload(self) -> None: ...

    def read_file(self, path: str) -> Iterable[bytes]: ...

    def listdir(self, path: str) -> Iterable[object]: ...


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


class VolumeLoraCache(LoraCache):
    """The LoRA cache on a Volume. A web container stores each file it checked at submit and commits
    it before the job exists; a job container that does not see a file in its view (stored after it
    mounted the Volume, which it mounts read-only) fetches that one file from the Volume's server,
    chunk by chunk, into a directory on its own disk, and loads it from there.

    Several web containers share the Volume, each through its own view, so a file that one of them
    removed for its budget may still be in another's view. A web container therefore trusts a file
    in its view only while the Volume still lists it (one listing per LoRA at submit); otherwise it
    fetches the file again, and its store writes and commits it anew. That also mends a store whose
    commit failed.

    The lock that orders writers is a local file: a Volume's file system need not support locks,
    and each container writes only its own view.
    """

    def __init__(self, directory: Path, budget_bytes: int, volume: Volume, local_dir: Path) -> None:
        super().__init__(directory, budget_bytes, lock_file=local_dir / "volume.lock")
        self._volume = volume
        self._fetched = LoraCache(local_dir, budget_bytes)

    # -- a web container, at submit

    def digest_of_source(self, source: str) -> str | None:
        digest = super().digest_of_source(source)
        if digest is not None and not self._on_volume(digest):
            return None  # gone from the Volume since this view was mounted: fetch it again
        return digest

    def _keep(self, digest: str, data: bytes, source: str | None) -> None:
        if self._find_here(digest) is not None and not self._on_volume(digest):
            self.path_of(digest).unlink(missing_ok=True)  # a stale copy: write it anew, for the commit to carry
        super()._keep(digest, data, source)
        self._volume.commit()  # the file, and any the budget removed

    def _on_volume(self, digest: str) -> bool:
        try:
            return bool(list(self._volume.listdir(self._on_volume_path(digest))))
        except Exception:  # not there (Modal raises NotFoundError), or no answer: storing again is safe
            return False

    # -- a job container, at run

    def find(self, digest: str) -> Path | None:
        found = self._find_here(digest) or self._fetched.find(digest)
        if found is not None:
            return found
        try:
            return self._fetched.keep_chunks(self._volume.read_file(self._on_volume_path(digest)), digest)
        except (FileNotFoundError, IsADirectoryError):
            return None  # removed for the budget since the job was submitted

    def _on_volume_path(self, digest: str) -> str:
        return self.path_of(digest).relative_to(self.directory).as_posix()
