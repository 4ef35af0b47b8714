"""Weights manifests: what a downloaded directory must hold, written once and checked at every load.

`hidream_manifest.json` in a weights directory names the repository, the pinned commit it was
downloaded at, and every file with its size and sha256. Loading refuses a directory whose manifest
names another revision than this build pins, or whose files are missing or of the wrong size; the
sha256 of every file is checked on request (`verify_weights`), because hashing ~60 GB takes minutes.

A directory without a manifest (tiny weights, a directory laid out by hand) is loaded as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from hidream_service.inference.sources import WeightSource
from hidream_service.inference.weights import WeightsError

MANIFEST_FILE = "hidream_manifest.json"
# What a download leaves beside the files that is not part of the model: the hub client's
# bookkeeping, and our own manifest and in-progress marker.
_NOT_MODEL_FILES = (".cache/", MANIFEST_FILE, ".hidream_download.json")
_HASH_CHUNK = 8 << 20


class ManifestMismatch(WeightsError):
    """A weights directory does not match its manifest or this build's pinned revision."""


@dataclass(frozen=True)
class ManifestFile:
    path: str  # relative, with '/' separators
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    repo: str
    revision: str
    files: tuple[ManifestFile, ...]

    def to_json(self) -> str:
        return json.dumps(
            {"repo": self.repo, "revision": self.revision, "files": [asdict(f) for f in self.files]}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(data["repo"], data["revision"], tuple(ManifestFile(**entry) for entry in data["files"]))

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)


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


def build_manifest(directory: Path, repo: str, revision: str) -> Manifest:
    files = tuple(
        ManifestFile(path.relative_to(directory).as_posix(), path.stat().st_size, sha256_of(path))
        for path in _model_files(directory)
    )
    return Manifest(repo, revision, files)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    partial = directory / (MANIFEST_FILE + ".partial")
    partial.write_text(manifest.to_json())
    os.replace(partial, directory / MANIFEST_FILE)


def read_manifest(directory: Path) -> Manifest | None:
    path = directory / MANIFEST_FILE
    return Manifest.from_json(path.read_text()) if path.is_file() else None


def problems(directory: Path, manifest: Manifest, pinned: WeightSource, *, hash_files: bool = False) -> list[str]:
    """What is wrong with `directory` against `manifest` and the `pinned` source it must hold (empty
    when it matches)."""
    found: list[str] = []
    if pinned.repo != manifest.repo:
        found.append(f"it holds {manifest.repo}, not {pinned.repo}")
    elif pinned.revision != manifest.revision:
        found.append(
            f"downloaded at revision {manifest.revision}, but this build pins {pinned.revision}: "
            "download the weights again (modal run modal_app.py::download_weights)"
        )
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file():
            found.append(f"{entry.path} is missing")
        elif path.stat().st_size != entry.size:
            found.append(f"{entry.path} has {path.stat().st_size} bytes, the manifest says {entry.size}")
        elif hash_files and sha256_of(path) != entry.sha256:
            found.append(f"{entry.path} does not have the sha256 the manifest records")
    return found


def verify_directory(source: WeightSource, root: Path, *, hash_files: bool = False) -> Manifest | None:
    """Raise ManifestMismatch if `source`'s folder under `root` has a manifest that it does not match,
    or that is not of this build's pinned revision. None: no manifest (tiny weights, a folder laid
    out by hand), which loads as it is."""
    directory = root / source.directory
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    found = problems(directory, manifest, source, hash_files=hash_files)
    if found:
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise ManifestMismatch(f"refusing to load {directory} ({manifest.repo}): {shown}")
    return manifest
