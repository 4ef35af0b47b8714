"""Image inputs at submit time: fetch (guarded), decode, store a clean PNG, point the job at it.

A bad image is answered at once with a 413 or 422 and never becomes a job. The job's input then
holds a URL of ours (`/files/input-<sha256>/image.png`) to a PNG this process wrote, so workers
(and a re-run of the job) read a known-good file from storage instead of the caller's bytes.

A URL that cannot be fetched, and anything wrong with what a private (loopback, LAN) address
answered, get one message (`UNREACHABLE`): a caller must not learn from our errors which ports of
the operator's network are open, or what they serve. A public host's answer is explained.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx

from hidream_service.image_inputs import CleanImage, ImageDecoder, ImageInputError
from hidream_service.storage import OutputStorage, files_key
from webhooks.ssrf import BlockedRequest, BlockedURL, from_private_address, parse_target

INPUT_FILE_NAME = "image.png"
_DATA_URI_PREFIX = "data:"
UNREACHABLE = (
    "could not download the image: no usable image came back from that URL (it could not be reached, did not "
    "answer in time, or did not answer with an image)"
)


@dataclass(frozen=True)
class PreparedImage:
    key: str  # storage key of the clean PNG
    width: int  # after EXIF orientation
    height: int


@dataclass
class ImageInputs:
    client: httpx.AsyncClient  # the SSRF-guarded client, redirects off
    storage: OutputStorage
    max_bytes: int
    decoder: ImageDecoder  # the pixel and decoded-size limits, and how many decode at once
    timeout: float
    # What is fetched, in messages: LoRA files come through the same download (api/lora_inputs.py).
    noun: str = "image"
    unreachable: str = UNREACHABLE

    async def prepare(self, url: str, *, own_hosts: set[str]) -> PreparedImage:
        """Fetch and check one image input; return where its normalized PNG is stored, and its size."""
        data, private = await self._read(url, own_hosts)
        # Decoding and encoding (a few at a time) and the storage write are CPU and disk (or Volume)
        # work: off the event loop.
        try:
            clean = await self.decoder.to_png(data)
        except ImageInputError:
            if private:
                raise ImageInputError(422, self.unreachable) from None
            raise
        return await asyncio.to_thread(self._store_clean_copy, clean)

    def _store_clean_copy(self, clean: CleanImage) -> PreparedImage:
        png = clean.png
        key = f"input-{hashlib.sha256(png).hexdigest()[:40]}/{INPUT_FILE_NAME}"
        # Content-addressed: the same image keeps one file. A file already here is touched rather
        # than written again, so that the retention sweep counts its age from its latest use.
        stored = self.storage.lookup(key)
        if isinstance(stored, Path):
            os.utime(stored)
        elif stored is None:
            self.storage.put(key, png)
        return PreparedImage(key, clean.width, clean.height)

    async def _read(self, url: str, own_hosts: set[str]) -> tuple[bytes, bool]:
        """The image's bytes, and whether they came from a private address (whose answers go undescribed)."""
        if url.startswith(_DATA_URI_PREFIX):
            return self._data_uri(url), False
        try:
            parse_target(url)
        except BlockedURL as exc:
            raise ImageInputError(
                422, f"image URLs must be http(s) URLs, data URIs, or URLs of files uploaded here ({exc})"
            ) from None
        key = files_key(url)
        if key is not None and urllib.parse.urlsplit(url).netloc in own_hosts:
            return await asyncio.to_thread(self._own_file, key), False
        return await self.download(url)

    def _data_uri(self, url: str) -> bytes:
        header, comma, payload = url[len(_DATA_URI_PREFIX) :].partition(",")
        if not comma or not header.endswith(";base64"):
            raise ImageInputError(422, "data URIs must be base64: data:image/png;base64,<data>")
        if len(payload) * 3 // 4 > self.max_bytes:
            raise ImageInputError(413, f"the image is larger than {self.max_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageInputError(422, "the data URI is not valid base64") from None

    def _own_file(self, key: str) -> bytes:
        stored = self.storage.lookup(key)
        if stored is None:
            raise ImageInputError(422, "no file was uploaded at that URL (it may have expired or never existed)")
        size = stored.stat().st_size if isinstance(stored, Path) else len(stored)
        if size > self.max_bytes:
            raise ImageInputError(413, f"the image is larger than {self.max_bytes} bytes")
        return stored.read_bytes() if isinstance(stored, Path) else stored

    async def download(self, url: str) -> tuple[bytes, bool]:
        """A URL's bytes through the guarded client within `max_bytes` and `timeout`, and whether they
        came from a private address (whose faults, and whose content if unusable, go undescribed)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._stream(url)
        except BlockedRequest as exc:  # the address guard's reason: about the URL, not about what answered
            raise ImageInputError(422, f"could not download the {self.noun}: {exc}") from None
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL, UnicodeError):
            # Refused, reset, timed out, unresolvable: all alike, whoever the host is.
            raise ImageInputError(422, self.unreachable) from None

    async def _stream(self, url: str) -> tuple[bytes, bool]:
        async with self.client.stream("GET", url, timeout=self.timeout) as response:
            if from_private_address(response):
                return await self._read_private(response), True
            if response.is_redirect:
                location = response.headers.get("location", "?")
                raise ImageInputError(
                    422,
                    f"the {self.noun} URL answered {response.status_code} (redirect to {location}); redirects are "
                    "not followed, so send the final URL",
                )
            if response.status_code != 200:
                raise ImageInputError(422, f"the {self.noun} URL answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise ImageInputError(413, f"the {self.noun} is larger than {self.max_bytes} bytes")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > self.max_bytes:
                    raise ImageInputError(413, f"the {self.noun} is larger than {self.max_bytes} bytes")
            return bytes(data), False

    async def _read_private(self, response: httpx.Response) -> bytes:
        """A private address's answer, all of whose faults read the same (`unreachable`)."""
        if response.status_code != 200:
            raise ImageInputError(422, self.unreachable)
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > self.max_bytes:
                raise ImageInputError(422, self.unreachable)
        return bytes(data)
