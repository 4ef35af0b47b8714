"""LoRA files on disk, content-addressed: the API stores each file it fetched and checked at submit,
workers read it from here and never from the network.

    <directory>/files/<sha256>.safetensors     one file per content, whatever its source
    <directory>/sources/<sha256 of source>     the digest a source (URL, hub reference) gave

The directory must be the same for the API and the workers (HIDREAM_LORA_CACHE_DIR): by default
under the data dir; with several nodes, on the mount they share; on Modal, a Volume (VolumeLoraCache
in modal_backend/storage.py). A byte budget bounds it: the least recently used files go first (a use
is a file's mtime, touched on each store, lookup and load), never the one just stored. A source seen
before is not fetched again while its file is here: a URL is taken to keep its content, as a cache
of the web would (change the URL to fetch anew).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LoraCache:
    def __init__(self, directory: Path, budget_bytes: int, *, lock_file: Path | None = None) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        self._files = directory / "files"
        self._sources = directory / "sources"
        self._lock_file = lock_file or directory / ".lock"

    def path_of(self, digest: str) -> Path:
        if DIGEST.match(digest) is None:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self._files / f"{digest}{SUFFIX}"

    def find(self, digest: str) -> Path | None:
        """The file with this digest, marked as used now; None if it is not (or no longer) here."""
        return self._find_here(digest)

    def _find_here(self, digest: str) -> Path | None:
        path = self.path_of(digest)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except OSError:  # a read-only mount: found, but its use cannot be marked
            return path if path.is_file() else None
        return path

    def digest_of_source(self, source: str) -> str | None:
        """The digest `source` gave when it was stored, if its file is still here."""
        try:
            digest = (self._sources / _source_name(source)).read_text().strip()
        except FileNotFoundError:
            return None
        if DIGEST.match(digest) is None or self.find(digest) is None:
            return None
        return digest

    def store(self, data: bytes, source: str | None = None) -> str:
        """Keep `data` (already checked) and remember `source` gave it; its digest. Older files
        leave if the budget is exceeded."""
        digest = digest_of(data)
        self._keep(digest, data, source)
        return digest

    def _keep(self, digest: str, data: bytes, source: str | None) -> None:
        with self._locked():
            if self._find_here(digest) is None:
                _write_atomically(self.path_of(digest), data)
            if source is not None:
                _write_atomically(self._sources / _source_name(source), digest.encode())
            self._evict(keep=digest)

    def keep_chunks(self, chunks: Iterable[bytes], digest: str) -> Path | None:
        """Keep a file that arrives in chunks (written as they come, never whole in memory) if its
        content has `digest`; where it is now, or None."""
        self._files.mkdir(parents=True, exist_ok=True)
        temporary = self._files / f".{uuid.uuid4().hex}.tmp"
        hasher = hashlib.sha256()
        try:
            with open(temporary, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
            if hasher.hexdigest() != digest:
                return None
            with self._locked():
                os.replace(temporary, self.path_of(digest))
                self._evict(keep=digest)
        finally:
            temporary.unlink(missing_ok=True)
        return self.path_of(digest)

    def size_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())

    def _entries(self) -> list[tuple[float, Path, int]]:
        """(mtime, path, size) of each stored file."""
        entries = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self._files) as found:
            for entry in found:
                if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        stat = entry.stat()
                        entries.append((stat.st_mtime, Path(entry.path), stat.st_size))
        return entries

    def _evict(self, keep: str) -> None:
        entries = sorted(self._entries())
        total = sum(size for _, _, size in entries)
        kept = self.path_of(keep)
        for _, path, size in entries:
            if total <= self.budget_bytes:
                break
            if path == kept:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.info("LoRA cache over %d bytes: removed %s", self.budget_bytes, path.name)
            total -= size
        # A source whose file left is found missing at its next lookup and fetched again.

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time across the API's threads and every process sharing the directory."""
        self._files.mkdir(parents=True, exist_ok=True)
        self._sources.mkdir(parents=True, exist_ok=True)
        self._lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_file, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _source_name(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the whole file or none of it."""
    temporary = path.parent / f".{uuid.uuid4().hex}.tmp"
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
