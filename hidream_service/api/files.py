"""Stored outputs and uploads at stable URLs: /files/{request_id}/{name}.

The URLs are capabilities (a random request id), so that webhook receivers and browsers can fetch
them without an API key, as with fal's media URLs.

They are served on the API's own origin, and an upload holds whatever its caller sent, so nothing
here may ever run as a page: the type comes from the file's first bytes (PNG, JPEG, WebP, GIF),
never from its name; anything else is a download (`application/octet-stream`, attachment); and
every answer says `nosniff` and carries a CSP that sandboxes it and allows it to load nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from hidream_service.api.state import AppState, app_state
from hidream_service.image_inputs import sniff_format
from hidream_service.storage import CONTENT_TYPES
from hidream_service.uploads import clean_name

router = APIRouter()

#: On every answer under /files, errors included.
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}
#: Images are immutable under their capability URL; anything else is not kept by shared caches.
IMAGE_CACHING = "public, max-age=31536000, immutable"
DOWNLOAD_CACHING = "private, no-store"
_SNIFF_BYTES = 16
_MEDIA_TYPES = {**CONTENT_TYPES, "gif": "image/gif"}


def image_type(head: bytes) -> str | None:
    """The image media type its first bytes prove, or None."""
    if head.startswith((b"GIF87a", b"GIF89a")):
        return _MEDIA_TYPES["gif"]
    found = sniff_format(head)
    return None if found is None else _MEDIA_TYPES[found]


def _why_missing(state: AppState, request_id: str) -> str:
    """The request id in the URL is the capability: whoever holds it may learn its files expired."""
    job = state.service.store.get(request_id)
    if job is not None and job.files_expired_at is not None:
        hours = state.settings.output_ttl_hours
        return f"file expired: outputs are kept for {hours:g} hours (HIDREAM_OUTPUT_TTL_HOURS) and this one was removed"
    return "file not found"


def _lookup(state: AppState, key: str) -> tuple[Path | bytes, bytes] | None:
    """The stored file and its first bytes, or None. A key no file can have (too long a name for
    the filesystem, say) is simply not there."""
    try:
        stored = state.storage.lookup(key)
        if stored is None:
            return None
        if isinstance(stored, bytes):
            return stored, stored[:_SNIFF_BYTES]
        with stored.open("rb") as file:
            return stored, file.read(_SNIFF_BYTES)
    except OSError:
        return None


@router.get("/files/{request_id}/{name}")
async def get_file(request: Request, request_id: str, name: str) -> Response:
    state = app_state(request)
    found = await asyncio.to_thread(_lookup, state, f"{request_id}/{name}")
    if found is None:
        raise HTTPException(404, await state.store_call(_why_missing, state, request_id), headers=SAFE_HEADERS)
    stored, head = found
    media_type = image_type(head)
    if media_type is not None:
        headers = {**SAFE_HEADERS, "Cache-Control": IMAGE_CACHING}
    else:
        media_type = "application/octet-stream"
        attachment = f'attachment; filename="{clean_name(name)}"'  # [A-Za-z0-9._-]: nothing to escape
        headers = {**SAFE_HEADERS, "Cache-Control": DOWNLOAD_CACHING, "Content-Disposition": attachment}
    if isinstance(stored, bytes):
        return Response(stored, media_type=media_type, headers=headers)
    return FileResponse(stored, media_type=media_type, headers=headers)
