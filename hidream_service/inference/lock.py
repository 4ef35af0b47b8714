"""The lock file: which commit of each repository a weights root holds, and each file's size and sha256.

`hidream_weights.lock.json` sits at the weights root (a local directory or the Modal Volume), one
entry per repository, sorted by name:

    {"format": 1, "repositories": [
      {"repo": "HiDream-ai/HiDream-I1-Full", "revision": "<40-hex commit>", "directory": "HiDream-I1-Full",
       "files": [{"path": "model_index.json", "size": 737, "sha256": "<64 hex>"}, ...]},
      ...]}

`files` is null until the download at that revision has finished. Changing a `revision` by hand
pins that commit: the next download fetches it, and loading refuses the folder until then.

Each downloaded folder also holds `.hidream_download.json`, the revision its files are of and
whether their download finished: that is how a folder is told apart from the revision it is locked
to after a pin changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hidream_service.inference.sources import is_commit_sha
from hidream_service.inference.weights import WeightsError

LOCK_FILE = "hidream_weights.lock.json"
LOCK_FORMAT = 1
DOWNLOAD_RECORD = ".hidream_download.json"
# What a download leaves in a folder that is not part of the model: the hub client's bookkeeping
# and our record.
_NOT_MODEL_FILES = (".cache/", DOWNLOAD_RECORD)
_HASH_CHUNK = 8 << 20


class LockFileError(WeightsError):
    """The lock file cannot be read, or names a revision that is not a commit sha."""


@dataclass(frozen=True)
class LockedFile:
    path: str  # relative to the repository's folder, with '/' separators
    size: int
    sha256: str


@dataclass(frozen=True)
class LockedRepository:
    repo: str
    revision: str  # a 40-character commit sha
    directory: str  # under the weights root
    files: tuple[LockedFile, ...] | None = None  # None: not downloaded at this revision yet

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files or ())

    def describe(self) -> str:
        if self.files is None:
            return f"{self.repo}@{self.revision}: not downloaded yet"
        return f"{self.repo}@{self.revision}: {len(self.files)} files, {self.total_bytes / 1e9:.1f} GB"

    def to_json(self) -> dict[str, Any]:
        files = None if self.files is None else [asdict(entry) for entry in self.files]
        return {"repo": self.repo, "revision": self.revision, "directory": self.directory, "files": files}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LockedRepository:
        files = data.get("files")
        return cls(
            data["repo"],
            data["revision"],
            data["directory"],
            None if files is None else tuple(LockedFile(**entry) for entry in files),
        )


def read_lock(root: Path) -> dict[str, LockedRepository]:
    """The lock file's entries by repository; empty when `root` has no lock file."""
    path = root / LOCK_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        entries = [LockedRepository.from_json(entry) for entry in data["repositories"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise LockFileError(f"{path} cannot be read ({exc!r}): fix it, or delete it and download again") from exc
    for entry in entries:
        if not is_commit_sha(entry.revision):
            raise LockFileError(
                f"{path}: the revision of {entry.repo} is {entry.revision!r}, not a 40-character commit sha"
            )
    return {entry.repo: entry for entry in entries}


def write_lock(root: Path, entries: Iterable[LockedRepository]) -> None:
    """Replace the lock file in one step, so that a reader never sees half of it."""
    ordered = sorted(entries, key=lambda entry: entry.repo)
    text = json.dumps({"format": LOCK_FORMAT, "repositories": [entry.to_json() for entry in ordered]}, indent=1)
    partial = root / (LOCK_FILE + ".partial")
    partial.write_text(text + "\n")
    os.replace(partial, root / LOCK_FILE)


def lock_repositories(root: Path, changed: Iterable[LockedRepository]) -> None:
    """Write `changed` into the lock file, keeping every other entry as the file has it now."""
    entries = read_lock(root)
    entries.update({entry.repo: entry for entry in changed})
    write_lock(root, entries.values())


@dataclass(frozen=True)
class DownloadRecord:
    """What a folder's files are: the repository, the commit, and whether their download finished."""

    repo: str
    revision: str
    complete: bool


def read_record(directory: Path) -> DownloadRecord | None:
    path = directory / DOWNLOAD_RECORD
    if not path.is_file():
        return None
    try:
        return DownloadRecord(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # unreadable: the folder is treated as holding an unknown revision


def write_record(directory: Path, record: DownloadRecord) -> None:
    partial = directory / (DOWNLOAD_RECORD + ".partial")
    partial.write_text(json.dumps(asdict(record)))
    os.replace(partial, directory / DOWNLOAD_RECORD)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and not relative.startswith(_NOT_MODEL_FILES):
            yield path


def hash_files(directory: Path) -> tuple[LockedFile, ...]:
    """Every model file under `directory` with its size and sha256."""
    return tuple(
        LockedFile(path.relative_to(directory).as_posix(), path.stat().st_size, sha256_of(path))
        for path in _model_files(directory)
    )
