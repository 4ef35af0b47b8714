"""Decoding images that callers send, before any of it reaches a model.

Untrusted bytes go through one function, `decode_image`: the format is checked by magic bytes
(JPEG, PNG, WebP only); the pixel count and the decoded size are checked from the header before
anything is decoded; EXIF orientation is applied and alpha is flattened onto white. What comes out
is a plain RGB image that the API re-encodes as PNG for the workers (`ImageDecoder.to_png`, a few at
a time), so a worker never parses a caller's file.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass
from typing import Any

#: Far below Pillow's own bomb limit (~89 MP): HiDream renders about 1 MP, so 16.7 MP is plenty.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: An 8-bit RGBA image at the pixel limit; a 16-bit one counts twice as much.
DEFAULT_MAX_DECODED_BYTES = DEFAULT_MAX_PIXELS * 4
DEFAULT_MAX_CONCURRENT_DECODES = 2

_MAGIC = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
}
_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_PNG_BIT_DEPTH_OFFSET = 24  # signature (8), IHDR length and type (8), width and height (8)


class ImageInputError(Exception):
    """An image input that cannot be used. `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    image: Any  # PIL.Image.Image, RGB
    source_format: str  # jpeg | png | webp
    width: int
    height: int


@dataclass(frozen=True)
class CleanImage:
    """An image input re-encoded as PNG, with its size after EXIF orientation."""

    png: bytes
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """jpeg, png or webp from the first bytes; None for anything else."""
    for name, prefixes in _MAGIC.items():
        if data.startswith(prefixes):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> DecodedImage:
    """Validate and decode one image; raise ImageInputError (413 or 422) for anything unusable."""
    from PIL import Image, ImageOps

    if not data:
        raise ImageInputError(422, "the image is empty (0 bytes)")
    source_format = sniff_format(data)
    if source_format is None:
        raise ImageInputError(
            422, "the file is not a JPEG, PNG or WebP image (checked by its first bytes); convert it to one of those"
        )
    try:
        with warnings.catch_warnings():
            # Our pixel limit is far lower than Pillow's, so its bomb warning can only come after ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[source_format]])
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageInputError(
                    413,
                    f"the image is {width}x{height} ({width * height} pixels); the limit is {max_pixels} pixels. "
                    "Resize it and send it again",
                )
            if width < 1 or height < 1:
                raise ImageInputError(422, f"the image has no pixels ({width}x{height})")
            _check_decoded_size(data, source_format, opened, max_decoded_bytes)
            opened.seek(0)  # animated PNG/WebP: the first frame
            opened.load()
            # In place: a copy per step is what made a 16 MP RGBA image cost hundreds of megabytes.
            ImageOps.exif_transpose(opened, in_place=True)
            rgb = _flatten_to_rgb(opened)
    except ImageInputError:
        raise
    except Image.DecompressionBombError:  # Pillow's own check, in open(), for absurd headers
        raise ImageInputError(
            413, f"the image header claims far more pixels than the limit of {max_pixels}; resize it and send it again"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageInputError(
            422, f"the {source_format.upper()} image could not be decoded ({exc}); it may be truncated or corrupt"
        ) from None
    return DecodedImage(rgb, source_format, rgb.width, rgb.height)


def decoded_bytes(data: bytes, source_format: str, opened: Any) -> tuple[int, int]:
    """(bytes the image takes decoded, bytes a pixel) from its header: channels x bytes a channel.

    Pillow's mode gives the channels; a PNG's IHDR says whether each takes 16 bits (Pillow opens a
    16-bit RGBA PNG as plain RGBA, but its decoder still works through 8 bytes a pixel).
    """
    sixteen_bits = source_format == "png" and len(data) > _PNG_BIT_DEPTH_OFFSET and data[_PNG_BIT_DEPTH_OFFSET] == 16
    per_pixel = len(opened.getbands()) * (2 if sixteen_bits else 1)
    width, height = opened.size
    return width * height * per_pixel, per_pixel


def _check_decoded_size(data: bytes, source_format: str, opened: Any, limit: int) -> None:
    total, per_pixel = decoded_bytes(data, source_format, opened)
    if total > limit:
        width, height = opened.size
        raise ImageInputError(
            413,
            f"the image is {width}x{height} at {per_pixel} bytes a pixel ({opened.mode}"
            f"{', 16 bits a channel' if per_pixel > len(opened.getbands()) else ''}): {total} bytes decoded; "
            f"the limit is {limit} bytes. Resize it or save it with 8 bits a channel",
        )


def _flatten_to_rgb(image: Any) -> Any:
    from PIL import ImageOps

    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        # White where the image is transparent: the same blend as compositing onto a white canvas,
        # with one full-size copy (the RGB) instead of four.
        transparency = ImageOps.invert(rgba.getchannel("A"))
        rgb = rgba.convert("RGB")
        rgb.paste((255, 255, 255), mask=transparency)
        return rgb
    if image.mode == "I;16" or image.mode == "I":
        # 16-bit greyscale PNG: scale to 8 bits rather than letting convert() clip it to white.
        return image.point(lambda value: value / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def clean_png(data: bytes, *, max_pixels: int, max_decoded_bytes: int) -> CleanImage:
    """Decode (checked) and re-encode as PNG: what a worker will read instead of the caller's bytes."""
    decoded = decode_image(data, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
    return CleanImage(encode_png(decoded.image), decoded.width, decoded.height)


class ImageDecoder:
    """Image inputs to clean PNGs under the pixel and decoded-size limits, `max_concurrent` at a time.

    A decode's memory is a multiple of its decoded size, so the budget bounds one and the slots bound
    how many run together. Callers wait for a slot in the event loop rather than in a thread, so a
    queue of images never holds the threads that file reads and writes also need.
    """

    def __init__(
        self,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT_DECODES,
    ) -> None:
        self.max_pixels = max_pixels
        self.max_decoded_bytes = max_decoded_bytes
        self.max_concurrent = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)

    async def to_png(self, data: bytes) -> CleanImage:
        await self._slots.acquire()
        try:
            work = asyncio.get_running_loop().run_in_executor(None, self._clean, data)
        except BaseException:  # no thread was started (the executor is shutting down)
            self._slots.release()
            raise
        # The slot is freed when the decode ends, not when a caller stops waiting: a request
        # cancelled mid-decode leaves its thread running, and that thread still counts.
        work.add_done_callback(lambda _: self._slots.release())
        return await asyncio.shield(work)

    def _clean(self, data: bytes) -> CleanImage:
        return clean_png(data, max_pixels=self.max_pixels, max_decoded_bytes=self.max_decoded_bytes)
