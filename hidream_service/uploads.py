"""Files callers upload (fal storage, Replicate /v1/files), stored beside outputs and served the same way.

An upload gets a random id and keeps a cleaned version of its name; its URL is a capability URL like
an output's, and can be passed to any endpoint input that takes an image URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hidream_service.storage import OutputStorage

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
MAX_NAME_LENGTH = 100


class UploadTooLarge(Exception):
    """The upload is larger than HIDREAM_MAX_UPLOAD_BYTES."""


@dataclass(frozen=True)
class Upload:
    id: str
    name: str
    content_type: str
    size: int
    sha256: str
    md5: str
    created_at: float
    url: str


def clean_name(name: str | None) -> str:
    cleaned = _UNSAFE.sub("_", (name or "").rsplit("/", 1)[-1])
    # One dot at a time: storage refuses any key holding "..", so "a..png" would never be stored.
    cleaned = _DOTS.sub(".", cleaned).strip("._")[:MAX_NAME_LENGTH]
    return cleaned or "upload.bin"


def new_upload_id() -> str:
    return f"upload-{uuid.uuid4().hex}"


async def store_upload(
    storage: OutputStorage,
    chunks: AsyncIterator[bytes],
    *,
    name: str | None,
    content_type: str | None,
    max_bytes: int,
    base_url: str,
    upload_id: str | None = None,
) -> Upload:
    """Read the chunks (refusing past max_bytes before reading them all), store, describe."""
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > max_bytes:
            raise UploadTooLarge(f"uploads are limited to {max_bytes} bytes")
    upload_id = upload_id or new_upload_id()
    file_name = clean_name(name)
    await asyncio.to_thread(storage.put, f"{upload_id}/{file_name}", bytes(data))
    return Upload(
        id=upload_id,
        name=file_name,
        content_type=content_type or "application/octet-stream",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        created_at=time.time(),
        url=f"{base_url}/files/{upload_id}/{file_name}",
    )
