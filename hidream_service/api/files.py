"""Stored outputs at stable URLs: /files/{request_id}/{name}.

The URLs are capabilities (a random request id), so that webhook receivers and browsers can fetch
them without an API key, as with fal's media URLs.
"""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from hidream_service.api.state import app_state
from hidream_service.storage import CONTENT_TYPES, EXTENSIONS

router = APIRouter()
_MEDIA_TYPES = {extension: CONTENT_TYPES[fmt] for fmt, extension in EXTENSIONS.items()}


@router.get("/files/{request_id}/{name}")
async def get_file(request: Request, request_id: str, name: str) -> FileResponse:
    path = app_state(request).storage.path_for(f"{request_id}/{name}")
    if path is None or not path.is_file():
        raise HTTPException(404, "file not found")
    media_type = _MEDIA_TYPES.get(path.suffix.lstrip(".")) or mimetypes.guess_type(path.name)[0]
    media_type = media_type or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000, immutable"})
