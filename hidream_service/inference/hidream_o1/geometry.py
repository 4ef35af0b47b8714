"""Sizes HiDream-O1 works at: output presets, reference images, the vision encoder's condition images.

All of it follows the official release (HiDream-ai/HiDream-O1-Image, models/utils.py and
models/pipeline.py). Pure Python (and PIL for the resizes): the API process may import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Pixels per side of one image token: the model denoises raw 32x32 RGB patches.
PATCH_SIZE = 32
#: The release's output sizes, (width, height). Requests snap to the closest aspect ratio.
PRESETS: tuple[tuple[int, int], ...] = (
    (2048, 2048),
    (2304, 1728),
    (1728, 2304),
    (2560, 1440),
    (1440, 2560),
    (2496, 1664),
    (1664, 2496),
    (3104, 1312),
    (1312, 3104),
    (2304, 1792),
    (1792, 2304),
)
#: keep_original_aspect renders at the single reference's size after resizing it to this area side.
KEEP_ASPECT_SIDE = 2048
#: Side of the images the Qwen3-VL vision encoder sees (it reads references at low resolution).
CONDITION_IMAGE_SIZE = 384
#: The vision encoder's token side in pixels (16-pixel patches merged 2x2).
VISION_TOKEN_PIXELS = 32


@dataclass(frozen=True)
class Geometry:
    """The release's sizes, or the same divided by `divisor` (tiny weights render a few dozen pixels)."""

    patch_size: int = PATCH_SIZE
    divisor: int = 1
    condition_image_size: int = CONDITION_IMAGE_SIZE

    @property
    def presets(self) -> tuple[tuple[int, int], ...]:
        return tuple((self._scaled(width), self._scaled(height)) for width, height in PRESETS)

    @property
    def keep_aspect_side(self) -> int:
        return KEEP_ASPECT_SIDE // self.divisor

    def _scaled(self, side: int) -> int:
        return max(self.patch_size, round(side / self.divisor / self.patch_size) * self.patch_size)

    def snap(self, width: int, height: int) -> tuple[int, int]:
        """The preset whose aspect ratio is closest to width/height (the first one on a tie)."""
        ratio = width / height
        return min(self.presets, key=lambda preset: abs(preset[0] / preset[1] - ratio))

    def reference_area_side(self, width: int, height: int, count: int) -> int:
        """Area side each of `count` references is resized to: fewer pixels per image as there are more."""
        longest = max(width, height)
        if count == 1:
            return longest
        if count == 2:
            return longest * 48 // 64
        if count <= 4:
            return longest // 2
        if count <= 8:
            return longest * 24 // 64
        return longest // 4

    def condition_side(self, count: int) -> int:
        """Side of the vision encoder's view of each reference, smaller past four references."""
        if count <= 4:
            return self.condition_image_size
        if count <= 8:
            return self.condition_image_size * 48 // 64
        return self.condition_image_size // 2

    def condition_size(self, reference_width: int, reference_height: int, count: int) -> tuple[int, int]:
        """The vision encoder's input size for one reference: about condition_side**2 pixels in the
        reference's aspect ratio, each side floored to whole vision tokens (never below one)."""
        side = self.condition_side(count)
        ratio = reference_width / reference_height
        width = math.sqrt(side * side * ratio)
        height = width / ratio
        return (
            max(VISION_TOKEN_PIXELS, int(width / VISION_TOKEN_PIXELS) * VISION_TOKEN_PIXELS),
            max(VISION_TOKEN_PIXELS, int(height / VISION_TOKEN_PIXELS) * VISION_TOKEN_PIXELS),
        )


@dataclass(frozen=True)
class ReferencePlan:
    """How one request's references are prepared and what it renders."""

    width: int  # output size
    height: int
    references: list[Any]  # PIL images at patch-aligned sizes, for the denoiser
    conditions: list[Any]  # PIL images at condition sizes, for the vision encoder
    kept_aspect: bool  # the output took the single reference's aspect ratio


def plan_references(
    geometry: Geometry, references: list[Any], width: int, height: int, *, keep_original_aspect: bool
) -> ReferencePlan:
    """Output size and resized references, as the release prepares them.

    One reference with keep_original_aspect: the reference is resized to the keep-aspect area and the
    output takes its size. Otherwise the requested size snaps to a preset and every reference is
    resized to an area that shrinks with their count.
    """
    from PIL import Image

    from hidream_service.inference.resizing import resize_to_area

    kept = keep_original_aspect and len(references) == 1
    if kept:
        resized = [resize_to_area(references[0], geometry.keep_aspect_side, geometry.patch_size)]
        width, height = resized[0].size
    else:
        width, height = geometry.snap(width, height)
        side = geometry.reference_area_side(width, height, len(references))
        resized = [resize_to_area(reference, side, geometry.patch_size) for reference in references]
    conditions = [
        image.resize(
            geometry.condition_size(image.width, image.height, len(resized)), resample=Image.Resampling.LANCZOS
        )
        for image in resized
    ]
    return ReferencePlan(width, height, resized, conditions, kept)
