"""The playground page at `/`, and its scripts and styles at /playground/<name>.

Static files shipped in the package (hidream_service/playground/): no build step, nothing loaded from
another host. The page talks to the public API with the caller's own key, so it can do nothing a
client could not. Asset paths have three segments at most and are GET only, so they never meet the
fal routes (`POST /{app_id}`, `GET /{owner}/{app}/requests/{id}...`).
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from hidream_service.api.state import app_state

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
INDEX = "index.html"


def _assets() -> dict[str, bytes]:
    folder = resources.files("hidream_service") / "playground"
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(suffix) for suffix in MEDIA_TYPES)
    }


ASSETS = _assets()  # a handful of small files, read once


def _security_headers(request: Request) -> dict[str, str]:
    """Scripts and styles only from this server; images and API calls also from HIDREAM_PUBLIC_URL,
    where output URLs point when it is set."""
    sources = "'self'"
    public_url = app_state(request).settings.public_url
    if public_url:
        parts = urlsplit(public_url)
        sources += f" {parts.scheme}://{parts.netloc}"
    policy = (
        f"default-src 'self'; img-src {sources} data: blob:; connect-src {sources}; "
        "script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def _asset(request: Request, name: str) -> Response:
    body = ASSETS.get(name)
    if body is None:
        raise HTTPException(404, f"no playground file {name}")
    media_type = next(media for suffix, media in MEDIA_TYPES.items() if name.endswith(suffix))
    return Response(body, media_type=media_type, headers=_security_headers(request))


@router.get("/")
async def page(request: Request) -> Response:
    return _asset(request, INDEX)


@router.get("/playground/{name}")
async def asset(request: Request, name: str) -> Response:
    return _asset(request, name)
