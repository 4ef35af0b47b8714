"""Live previews of a forming image, cheap enough to take every few denoising steps.

The latent families (I1, E1) denoise in the 16-channel latent space of their VAE. Decoding a latent
mid-loop costs about as much as a step, so a preview is a linear projection instead: each latent
pixel's channels times a 16x3 matrix, plus a bias, gives that pixel's colour at 1/8 of the output
size. The matrix is fitted once per VAE, by least squares, from a few random latents and what the
VAE decodes them to: it is the VAE's own best linear approximation, so it holds for any VAE the
pipeline loads (the published one, or the tiny test one), and no hand-copied table can go stale.
"""

from __future__ import annotations

import base64
import io
import weakref
from typing import Any

#: The longest side of a preview image: a progress picture, not an output.
PREVIEW_MAX_SIDE = 256
PREVIEW_JPEG_QUALITY = 70
_FIT_SAMPLES = 4  # random latents decoded to fit the projection
_FIT_SIDE = 8  # their side, in latent pixels

_projections: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def latent_projection(vae: Any) -> tuple[Any, Any]:
    """(weights [channels, 3], bias [3]) mapping a loop-space latent pixel to RGB in [-1, 1], fitted
    once per VAE (on its device and dtype, in float32)."""
    fitted = _projections.get(vae)
    if fitted is None:
        fitted = _projections[vae] = _fit(vae)
    return fitted


def _fit(vae: Any) -> tuple[Any, Any]:
    import torch

    channels = vae.config.latent_channels
    device = next(vae.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn(_FIT_SAMPLES, channels, _FIT_SIDE, _FIT_SIDE, generator=generator)
    with torch.inference_mode():
        unscaled = latents / vae.config.scaling_factor + vae.config.shift_factor
        pixels = vae.decode(unscaled.to(device, vae.dtype), return_dict=False)[0].float().cpu()
    # The colour of each latent pixel: the mean of the image patch it decodes to.
    colours = torch.nn.functional.adaptive_avg_pool2d(pixels, (_FIT_SIDE, _FIT_SIDE))
    inputs = latents.permute(0, 2, 3, 1).reshape(-1, channels)
    inputs = torch.cat([inputs, torch.ones(inputs.shape[0], 1)], dim=1)
    targets = colours.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(inputs, targets).solution  # [channels + 1, 3]
    return solution[:channels].to(device), solution[channels].to(device)


def project_latents(vae: Any, latents: Any) -> Any:
    """Loop-space latents [batch, channels, h, w] -> an RGB estimate [batch, 3, h, w] in [-1, 1]."""
    import torch

    weights, bias = latent_projection(vae)
    rgb = torch.einsum("bchw,cr->brhw", latents.to(weights.device, torch.float32), weights)
    return (rgb + bias[None, :, None, None]).clamp(-1.0, 1.0)


def shrunk(rgb: Any) -> Any:
    """[batch, 3, h, w] scaled down (on its device) to at most PREVIEW_MAX_SIDE on its longer side."""
    import torch

    height, width = rgb.shape[-2:]
    factor = max(height, width) / PREVIEW_MAX_SIDE
    if factor <= 1:
        return rgb
    size = (max(1, round(height / factor)), max(1, round(width / factor)))
    return torch.nn.functional.interpolate(rgb, size=size, mode="area")


def latent_previews(vae: Any, latents: Any) -> Any:
    """The forming-image thunk of a latent loop (see denoising.StepCallback)."""
    return lambda: project_latents(vae, latents)


def preview_pixels(rgb: Any) -> Any:
    """One forming image [3, h, w] in [-1, 1] -> 8-bit [h, w, 3], on its device. Done in the loop's
    thread: these are a few tiny tensor ops, and torch ops from a second thread would compete with
    the loop's own for the CPU's thread pool."""
    import torch

    return ((rgb.detach().float() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0)


def preview_data_uri(pixels: Any) -> str:
    """8-bit pixels [h, w, 3] (any device) -> a small JPEG as a data URI: a copy to the host and the
    encoding, with no tensor arithmetic, so it can run beside the loop."""
    from PIL import Image

    image = Image.fromarray(pixels.cpu().numpy(), mode="RGB")
    image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
