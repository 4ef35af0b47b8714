"""Output storage: images (and uploads) under stable keys, served by the API at /files/<key>.

Keys are derived from the job id and the image index, so a job that runs twice overwrites its own
files with the same names instead of leaving orphans. One machine keeps them under the data dir
(LocalOutputStorage); Modal keeps them in a Volume (modal_backend.storage.VolumeOutputStorage).
"""

from __future__ import annotations

import base64
import errno
import io
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

from hidream_service.models.base import ImageFile

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+$")


def encode_image(image: Any, output_format: str) -> bytes:
    buffer = io.BytesIO()
    if output_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=95)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


class OutputStorage(Protocol):
    """Where outputs and uploads are kept, and how the API reads them back."""

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, all at once: a reader never sees half of it."""

    def lookup(self, key: str) -> Path | bytes | None:
        """A local file to stream, the stored bytes, or None for a missing or foreign key."""

    def save_image(
        self, job_id: str, index: int, image: Any, output_format: str, *, base_url: str, sync_mode: bool
    ) -> ImageFile:
        """Encode and store one output image (or make it a data URI in sync mode)."""


def load_stored_image(storage: OutputStorage, url: str) -> Any:
    """Open an image input the API stored (a /files/ URL of ours) as RGB."""
    from PIL import Image

    from hidream_service.models.base import InputError

    key = files_key(url)
    stored = None if key is None else storage.lookup(key)
    if stored is None:
        raise InputError(f"image input {url} is not stored on this server (was it submitted through the API?)")
    with Image.open(stored if isinstance(stored, Path) else io.BytesIO(stored)) as image:
        return image.convert("RGB")


def files_key(url: str) -> str | None:
    """The storage key behind one of our /files/ URLs (whatever the host), or None."""
    _, marker, key = urllib.parse.urlsplit(url).path.partition("/files/")
    return urllib.parse.unquote(key) if marker and key else None


def fsync_directory(directory: Path) -> None:
    """Force a directory's entries (a file renamed into it) to disk, as fsync does a file's bytes."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    except OSError as exc:
        # Some network and FUSE mounts cannot sync a directory; they keep names their own way.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)


class LocalOutputStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def lookup(self, key: str) -> Path | bytes | None:
        path = self.path_for(key)
        return path if path is not None and path.is_file() else None

    def path_for(self, key: str) -> Path | None:
        """The file behind a key, or None for anything that is not one of our keys."""
        if not _SAFE_KEY.match(key) or ".." in key:
            return None
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        """Durable once this returns: the job row that names the file is committed after it, so the
        file's bytes and its name are forced to disk first. A write that fails (a full disk) leaves
        nothing behind."""
        path = self.path_for(key)
        if path is None:
            raise ValueError(f"bad storage key {key!r}")
        new_directory = not path.parent.is_dir()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            with open(partial, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)  # readers never see half a file
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)  # the new name
        if new_directory:
            fsync_directory(path.parent.parent)  # the directory's own name

    def save_image(
        self, job_id: str, index: int, image: Any, output_format: str, *, base_url: str, sync_mode: bool
    ) -> ImageFile:
        data = encode_image(image, output_format)
        content_type = CONTENT_TYPES[output_format]
        file_name = f"{index}.{EXTENSIONS[output_format]}"
        if sync_mode:
            url = f"data:{content_type};base64,{base64.b64encode(data).decode()}"
        else:
            key = f"{job_id}/{file_name}"
            self.put(key, data)
            url = f"{base_url.rstrip('/')}/files/{key}"
        width, height = image.size
        return ImageFile(
            url=url,
            content_type=content_type,
            file_name=file_name,
            file_size=len(data),
            width=width,
            height=height,
        )
