"""Images <-> rows of flattened RGB patches in [-1, 1], O1's working representation (no VAE)."""

from __future__ import annotations

from typing import Any

import torch

CHANNELS = 3


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """[batch, 3, H, W] -> [batch, (H/p)(W/p) row-major, 3 p p]: each row channel-major, then rows, then columns."""
    batch, channels, height, width = pixels.shape
    grid = pixels.reshape(batch, channels, height // patch, patch, width // patch, patch)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // patch) * (width // patch), channels * patch * patch)


def unpatchify(patches: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """The inverse of patchify: -> [batch, 3, height, width]."""
    batch = patches.shape[0]
    grid = patches.reshape(batch, height // patch, width // patch, CHANNELS, patch, patch)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(batch, CHANNELS, height, width)


def image_to_tensor(image: Any) -> torch.Tensor:
    """A PIL RGB image -> [1, 3, H, W] float32 in [-1, 1]."""
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return ((torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5)[None]


def tensor_to_images(pixels: torch.Tensor) -> list[Any]:
    """[batch, 3, H, W] in [-1, 1] -> PIL RGB images, rounded to the nearest 8-bit value."""
    from PIL import Image

    scaled = ((pixels.float().cpu() + 1) / 2 * 255).clamp(0, 255).round().to(torch.uint8)
    return [Image.fromarray(image.permute(1, 2, 0).numpy(), mode="RGB") for image in scaled]
