"""Request bodies read under a byte cap, counted as they arrive.

A declared Content-Length over the cap is refused before anything is read; a chunked body (no
length) is refused as soon as what has arrived passes the cap, so nothing past it is held in memory
or spooled to disk. Starlette's `request.form()` caps only non-file parts (file parts are spooled
with no limit, and this version has no body limit), so multipart bodies go through its parser fed
from the capped stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import HTTPException, Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

#: Text fields of a form are small; a file part's size is capped by the body's.
MAX_FIELD_BYTES = 64 * 1024


def too_large(message: str) -> HTTPException:
    """A 413 that also closes the connection: the rest of the body is left unread, and a server that
    kept the connection open would have to read (and discard) it all before the next request."""
    return HTTPException(413, message, headers={"Connection": "close"})


async def capped_stream(request: Request, max_bytes: int, message: str) -> AsyncGenerator[bytes, None]:
    """The body's chunks; a 413 (`message`) once more than `max_bytes` are declared or have arrived."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(message)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise too_large(message)
        yield chunk


async def read_form(request: Request, *, max_bytes: int, max_files: int, max_fields: int, message: str) -> FormData:
    """A multipart form read under the cap (its files spooled as usual, never past it). Any other
    content type gives an empty form, as `request.form()` does, for the route to say what is missing."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        return FormData()
    parser = MultiPartParser(
        request.headers,
        capped_stream(request, max_bytes, message),
        max_files=max_files,
        max_fields=max_fields,
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        return await parser.parse()  # on any error it closes the files it spooled
    except MultiPartException as exc:
        raise HTTPException(400, f"the multipart body could not be read: {exc.message}") from None
