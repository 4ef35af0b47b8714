"""Stored outputs at stable URLs: /files/{request_id}/{name}.

The URLs are capabilities (a random request id), so that webhook receivers and browsers can fetch
them without an API key, as with fal's media URLs.
"""

from __future__ import annotations

import asyncio
import mimetypes

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from hidream_service.api.state import AppState, app_state
from hidream_service.storage import CONTENT_TYPES, EXTENSIONS

router = APIRouter()
_MEDIA_TYPES = {extension: CONTENT_TYPES[fmt] for fmt, extension in EXTENSIONS.items()}


def _why_missing(state: AppState, request_id: str) -> str:
    """The request id in the URL is the capability: whoever holds it may learn its files expired."""
    job = state.service.store.get(request_id)
    if job is not None and job.files_expired_at is not None:
        hours = state.settings.output_ttl_hours
        return f"file expired: outputs are kept for {hours:g} hours (HIDREAM_OUTPUT_TTL_HOURS) and this one was removed"
    return "file not found"


@router.get("/files/{request_id}/{name}")
async def get_file(request: Request, request_id: str, name: str) -> Response:
    state = app_state(request)
    stored = await asyncio.to_thread(state.storage.lookup, f"{request_id}/{name}")
    if stored is None:
        raise HTTPException(404, await state.store_call(_why_missing, state, request_id))
    extension = name.rsplit(".", 1)[-1] if "." in name else ""
    media_type = _MEDIA_TYPES.get(extension) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {"Cache-Control": "public, max-age=31536000, immutable"}
    if isinstance(stored, bytes):
        return Response(stored, media_type=media_type, headers=headers)
    return FileResponse(stored, media_type=media_type, headers=headers)
