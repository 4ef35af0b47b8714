"""Decoding images that callers send, before any of it reaches a model.

Untrusted bytes go through one function, `decode_image`: the format is checked by magic bytes
(JPEG, PNG, WebP only), the pixel count is checked from the header before anything is decoded,
EXIF orientation is applied and alpha is flattened onto white. What comes out is a plain RGB image
that the API re-encodes as PNG for the workers, so a worker never parses a caller's file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

#: Far below Pillow's own bomb limit (~89 MP): HiDream renders about 1 MP, so 16.7 MP is plenty.
DEFAULT_MAX_PIXELS = 4096 * 4096

_MAGIC = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
}
_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


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


def sniff_format(data: bytes) -> str | None:
    """jpeg, png or webp from the first bytes; None for anything else."""
    for name, prefixes in _MAGIC.items():
        if data.startswith(prefixes):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
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
            opened.seek(0)  # animated PNG/WebP: the first frame
            opened.load()
            rgb = _flatten_to_rgb(ImageOps.exif_transpose(opened))
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


def _flatten_to_rgb(image: Any) -> Any:
    from PIL import Image

    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "I;16" or image.mode == "I":
        # 16-bit greyscale PNG: scale to 8 bits rather than letting convert() clip it to white.
        return image.point(lambda value: value / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
