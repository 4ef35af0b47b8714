"""Output sizes as fal's HiDream endpoints take them, and the one aspect-ratio rule every family shares."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field

MAX_IMAGE_URL_LENGTH = 30 << 20  # a data URI of the largest image input, base64
MAX_ASPECT_RATIO = 4.0  # 1 MP at 4:1 is 2048x512: the I1 transformer's 128-patch limit per side


class ImageSizeName(enum.StrEnum):
    SQUARE_HD = "square_hd"
    SQUARE = "square"
    PORTRAIT_4_3 = "portrait_4_3"
    PORTRAIT_16_9 = "portrait_16_9"
    LANDSCAPE_4_3 = "landscape_4_3"
    LANDSCAPE_16_9 = "landscape_16_9"


IMAGE_SIZE_PRESETS: dict[ImageSizeName, tuple[int, int]] = {
    ImageSizeName.SQUARE_HD: (1024, 1024),
    ImageSizeName.SQUARE: (512, 512),
    ImageSizeName.PORTRAIT_4_3: (768, 1024),
    ImageSizeName.PORTRAIT_16_9: (576, 1024),
    ImageSizeName.LANDSCAPE_4_3: (1024, 768),
    ImageSizeName.LANDSCAPE_16_9: (1024, 576),
}


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=16, le=4096, description="Requested width; sets the aspect ratio.")
    height: int = Field(ge=16, le=4096, description="Requested height; sets the aspect ratio.")


def requested_size(size: ImageSizeName | ImageSize) -> tuple[int, int]:
    if isinstance(size, ImageSize):
        return size.width, size.height
    return IMAGE_SIZE_PRESETS[size]


def too_elongated(width: int, height: int, what: str) -> str | None:
    """Why HiDream cannot render `what` at this size, or None: the one aspect-ratio rule, for requested
    sizes and for image inputs alike."""
    if max(width / height, height / width) <= MAX_ASPECT_RATIO:
        return None
    return f"{what} is {width}x{height}, more elongated than {MAX_ASPECT_RATIO:g}:1, which HiDream cannot render"


def check_aspect_ratio(width: int, height: int, what: str = "image_size") -> None:
    problem = too_elongated(width, height, what)
    if problem is not None:
        raise ValueError(problem)
