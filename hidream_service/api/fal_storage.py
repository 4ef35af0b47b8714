"""The upload flow `fal_client.upload_file` uses, at the server root (point REST_URL and CDN_URL here).

    POST /storage/auth/token?storage_type=fal-cdn-v3   -> {token, token_type, base_url, expires_at}
    POST /files/upload                                 raw bytes, X-Fal-File-Name -> {access_url}
    POST /storage/upload/initiate                      {file_name, content_type} -> {upload_url, file_url}
    PUT  /storage/upload/{ticket}/{name}               raw bytes to a URL from initiate (signed, one use)

The returned URLs can be passed to any input that takes an image URL.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from hidream_service.api import submission
from hidream_service.api.bodies import capped_stream
from hidream_service.api.rendering import iso
from hidream_service.api.state import AppState, app_state
from hidream_service.uploads import Upload, clean_name, new_upload_id, store_upload

router = APIRouter()

TOKEN_SECONDS = 3600


def _mac(state: AppState, message: str) -> str:
    """Storage tokens and upload URLs carry their own proof, made with a server key kept beside the
    webhook secrets (signing_keys.py): every process and container of a deployment shares it, so one
    issued by one web container is honoured by another and a restart does not void it, and no
    webhook secret rotation does either. (A plain HMAC: not worth a dependency such as itsdangerous.)"""
    return state.keys.token_mac(message)


def _token_for(state: AppState, owner: str, expires_at: int) -> str:
    return f"{owner or '-'}.{expires_at}.{_mac(state, f'token.{owner}.{expires_at}')}"


def _is_timestamp(text: str) -> bool:
    """Seconds since the epoch as we write them; not isdigit(), which takes "²" and 5000 digits,
    both of which int() refuses."""
    return len(text) <= 12 and text.isascii() and text.isdigit()


def _owner_from_token(state: AppState, token: str) -> str | None:
    owner, _, rest = token.partition(".")
    expires, _, _mac_text = rest.partition(".")
    if not _is_timestamp(expires) or int(expires) < time.time():
        return None
    owner = "" if owner == "-" else owner
    return owner if hmac.compare_digest(_token_for(state, owner, int(expires)), token) else None


def _uploader(state: AppState, request: Request) -> str:
    """Who uploads: a storage token we issued, else an API key."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and "." in token:
        owner = _owner_from_token(state, token.strip())
        if owner is not None:
            return owner
    return state.api_keys.owner(request)


async def _store(state: AppState, request: Request, name: str | None, upload_id: str | None = None) -> Upload:
    limit = state.settings.max_upload_bytes
    return await store_upload(
        state.storage,
        capped_stream(request, limit, f"uploads are limited to {limit} bytes"),  # chunked bodies too
        name=name,
        content_type=request.headers.get("content-type"),
        max_bytes=limit,
        base_url=submission.base_url(state, request),
        upload_id=upload_id,
    )


@router.post("/storage/auth/token")
async def token(request: Request) -> dict[str, Any]:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    expires_at = int(time.time()) + TOKEN_SECONDS
    return {
        "token": _token_for(state, owner, expires_at),
        "token_type": "Bearer",
        "base_url": submission.base_url(state, request),
        "expires_at": iso(expires_at),
    }


@router.post("/files/upload")
async def upload(request: Request) -> dict[str, str]:
    state = app_state(request)
    _uploader(state, request)
    stored = await _store(state, request, request.headers.get("x-fal-file-name"))
    return {"access_url": stored.url}


@router.post("/storage/upload/initiate")
async def initiate(request: Request) -> dict[str, str]:
    state = app_state(request)
    state.api_keys.owner(request)
    body = await submission.read_json_object(request)
    upload_url, file_url = begin_upload(state, request, str(body.get("file_name") or "upload.bin"))
    return {"upload_url": upload_url, "file_url": file_url}


def begin_upload(state: AppState, request: Request, file_name: str) -> tuple[str, str]:
    """A one-time PUT URL (valid an hour) and the URL the file will have once it is put."""
    name = clean_name(file_name)
    upload_id = new_upload_id()
    expires = int(time.time()) + TOKEN_SECONDS
    ticket = f"{upload_id}.{expires}.{_mac(state, f'upload.{upload_id}.{expires}.{name}')}"
    base = submission.base_url(state, request)
    return f"{base}/storage/upload/{ticket}/{name}", f"{base}/files/{upload_id}/{name}"


@router.put("/storage/upload/{ticket}/{name}")
async def put_upload(request: Request, ticket: str, name: str) -> JSONResponse:
    state = app_state(request)
    upload_id, _, rest = ticket.partition(".")
    expires, _, mac = rest.partition(".")
    valid = (
        _is_timestamp(expires)
        and int(expires) >= time.time()
        and hmac.compare_digest(_mac(state, f"upload.{upload_id}.{expires}.{name}"), mac)
    )
    # One time only: a URL whose file is already there has been used.
    if not valid or await asyncio.to_thread(state.storage.lookup, f"{upload_id}/{name}") is not None:
        raise HTTPException(404, "no such upload; ask /storage/upload/initiate for a new one")
    await _store(state, request, name, upload_id=upload_id)
    return JSONResponse({}, status_code=200)
