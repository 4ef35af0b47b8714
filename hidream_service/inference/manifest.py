"""Weights folders checked against the lock file's manifest of them (lock.py): at every load, and
in full on request.

Loading (`verify_directory`, from each family's `check_weights`) refuses a folder that is locked to
another revision than this build pins, that holds another revision than its lock entry (a pin
changed and not downloaded yet) or an unfinished download, or whose files are missing or of the
wrong size. `verify_weights` also hashes every file, which takes minutes for ~60 GB, so only on
request.

A weights root without a lock file, or a repository it does not list (tiny weights, a folder laid
out by hand), loads as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from hidream_service.inference.lock import LOCK_FILE, LockedFile, LockedRepository, read_lock, read_record, sha256_of
from hidream_service.inference.sources import WeightSource
from hidream_service.inference.weights import WeightsError

log = logging.getLogger(__name__)

DOWNLOAD_AGAIN = (
    "download it again (`hidream weights download MODEL --to ROOT`; "
    "on Modal, `modal run modal_app.py::download_weights`)"
)


class ManifestMismatch(WeightsError):
    """A weights folder does not match its lock entry, or the lock entry not this build's pin."""


class ModelSources(Protocol):
    """What `downloaded_models` asks of the registry."""

    @property
    def models(self) -> tuple[str, ...]: ...

    def model_sources(self, model: str) -> tuple[WeightSource, ...]: ...


def file_problems(directory: Path, files: Iterable[LockedFile], *, hash_files: bool = False) -> list[str]:
    found = []
    for entry in files:
        path = directory / entry.path
        if not path.is_file():
            found.append(f"{entry.path} is missing")
        elif path.stat().st_size != entry.size:
            found.append(f"{entry.path} has {path.stat().st_size} bytes, the lock file says {entry.size}")
        elif hash_files and sha256_of(path) != entry.sha256:
            found.append(f"{entry.path} does not have the sha256 the lock file records")
    return found


def problems(
    root: Path, locked: LockedRepository, source: WeightSource | None = None, *, hash_files: bool = False
) -> list[str]:
    """What is wrong with `locked`'s folder under `root`, and with `locked` against the `source` this
    build declares (when given); empty when it matches."""
    found = []
    if source is not None and source.directory != locked.directory:
        found.append(f"the lock file puts it in {locked.directory}/, this build loads it from {source.directory}/")
    if source is not None and source.revision is not None and source.revision != locked.revision:
        found.append(f"locked at revision {locked.revision}, but this build pins {source.revision}: {DOWNLOAD_AGAIN}")
    directory = root / locked.directory
    if not directory.is_dir():
        return [*found, f"{directory} is missing: {DOWNLOAD_AGAIN}"]
    record = read_record(directory)
    if record is None or record.repo != locked.repo:
        found.append(f"{directory} holds no finished download of {locked.repo}: {DOWNLOAD_AGAIN}")
    elif record.revision != locked.revision:
        found.append(
            f"{directory} holds revision {record.revision}, but the lock file pins {locked.revision}: {DOWNLOAD_AGAIN}"
        )
    elif not record.complete or locked.files is None:
        found.append(f"its download at {locked.revision} has not finished: {DOWNLOAD_AGAIN}")
    else:
        found.extend(file_problems(directory, locked.files, hash_files=hash_files))
    return found


def verify_directory(source: WeightSource, root: Path, *, hash_files: bool = False) -> LockedRepository | None:
    """Raise ManifestMismatch if `source`'s folder under `root` does not match its lock entry, or the
    entry not this build's pin. None: `root` does not lock `source` (tiny weights, a folder laid out
    by hand), which loads as it is."""
    locked = read_lock(root).get(source.repo)
    if locked is None:
        return None
    found = problems(root, locked, source, hash_files=hash_files)
    if found:
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise ManifestMismatch(f"refusing to load {root / source.directory} ({source.repo}): {shown}")
    return locked


def verify_weights(root: Path, sources: Iterable[WeightSource] | None = None, *, hash_files: bool = True) -> list[str]:
    """Every problem of the weights under `root`, one line each (empty: everything matches): each
    repository of `sources` (None: every one the lock file lists) must be locked, present and, with
    `hash_files`, hold exactly the bytes the lock file records."""
    try:
        locked = read_lock(root)
    except WeightsError as exc:
        return [str(exc)]
    if not locked:
        return [f"{root} has no {LOCK_FILE}: nothing was downloaded there by `hidream weights download`"]
    checks: list[tuple[LockedRepository, WeightSource | None]] = []
    found = []
    if sources is None:
        checks = [(entry, None) for entry in locked.values()]
    else:
        for wanted in sources:
            if wanted.repo in locked:
                checks.append((locked[wanted.repo], wanted))
            else:
                found.append(f"{wanted.repo}: not in {LOCK_FILE}, so not downloaded")
    for entry, source in checks:
        log.info("checking %s", entry.describe())
        found.extend(f"{entry.repo}: {problem}" for problem in problems(root, entry, source, hash_files=hash_files))
    return found


def downloaded_models(root: Path, registry: ModelSources) -> list[str]:
    """Keys of the models whose every repository `root`'s lock file lists, downloaded in full at its
    locked revision (file names and sizes; no hashing)."""
    locked = read_lock(root)

    def complete(source: WeightSource) -> bool:
        return source.repo in locked and not problems(root, locked[source.repo], source)

    return [
        model
        for model in registry.models
        if (sources := registry.model_sources(model)) and all(complete(source) for source in sources)
    ]
