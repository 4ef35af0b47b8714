"""Stored outputs at stable URLs: /files/{request_id}/{name}.

The URLs are capabilities (a random request id), so that webhook receivers and browsers can fetch
them without an API key, as with fal's media URLs.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from hidream_service.api.state import app_state
from hidream_service.storage import CONTENT_TYPES

router = APIRouter()
_MEDIA_TYPES = {"png": CONTENT_TYPES["png"], "jpg": CONTENT_TYPES["jpeg"]}


@router.get("/files/{request_id}/{name}")
async def get_file(request: Request, request_id: str, name: str) -> FileResponse:
    path = app_state(request).storage.path_for(f"{request_id}/{name}")
    if path is None or not path.is_file():
        raise HTTPException(404, "file not found")
    media_type = _MEDIA_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000, immutable"})
