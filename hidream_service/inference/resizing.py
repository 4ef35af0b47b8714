"""Resizing images to a pixel area, shared by the models whose official scripts resize that way."""

from __future__ import annotations

import math
from typing import Any


def resize_to_area(image: Any, area_side: int, multiple: int) -> Any:
    """The largest size of about area_side**2 pixels with sides in `multiple`s and the image's aspect
    ratio, scaled to cover and centre-cropped: the `resize_pilimage` of the HiDream-E1.1 and
    HiDream-O1 releases."""
    from PIL import Image

    while min(image.size) >= 2 * area_side:  # cheap box halving first, as the official scripts do
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    width, height = image.size
    scale = math.sqrt(area_side * area_side / (width * height))
    candidates = [
        (round_w(width * scale) // multiple * multiple, round_h(height * scale) // multiple * multiple)
        for round_w in (round, math.floor)
        for round_h in (round, math.floor)
    ]
    fitting = [size for size in candidates if size[0] * size[1] <= area_side * area_side and min(size) >= multiple]
    target_w, target_h = max(fitting or [(multiple, multiple)], key=lambda size: size[0] * size[1])
    cover = max(target_w / width, target_h / height)
    scaled_w, scaled_h = max(target_w, round(width * cover)), max(target_h, round(height * cover))
    image = image.resize((scaled_w, scaled_h), resample=Image.Resampling.BICUBIC)
    left, top = (scaled_w - target_w) // 2, (scaled_h - target_h) // 2
    return image.crop((left, top, left + target_w, top + target_h))
