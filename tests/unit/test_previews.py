"""Live previews: the latent-to-RGB projection is the VAE's own best linear fit, and a preview is a
small JPEG made off the denoising loop."""

from __future__ import annotations

import base64
import io
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from hidream_service.inference.previews import (
    PREVIEW_MAX_SIDE,
    preview_data_uri,
    preview_pixels,
    project_latents,
    shrunk,
)
from hidream_service.jobs.worker import PreviewRenderer, WorkerRunContext


class LinearVae(torch.nn.Module):
    """A stand-in VAE whose decoder is exactly linear per latent pixel (then upsampled 8x), with the
    scaling and shift a real one has: the fit must recover its map in loop space."""

    def __init__(self, weights: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.mix = torch.nn.Parameter(weights, requires_grad=False)
        self.offset = torch.nn.Parameter(bias, requires_grad=False)
        self.config = SimpleNamespace(latent_channels=weights.shape[0], scaling_factor=0.5, shift_factor=0.1)
        self.dtype = torch.float32

    def decode(self, latents: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        loop_space = (latents - self.config.shift_factor) * self.config.scaling_factor
        rgb = torch.einsum("bchw,cr->brhw", loop_space, self.mix) + self.offset[None, :, None, None]
        return (torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest"),)


def test_the_projection_recovers_a_linear_decoder() -> None:
    generator = torch.Generator().manual_seed(0)
    weights, bias = torch.randn(16, 3, generator=generator) * 0.2, torch.tensor([0.1, -0.2, 0.05])
    vae = LinearVae(weights, bias)
    latents = torch.randn(2, 16, 5, 7, generator=generator)

    projected = project_latents(vae, latents)

    expected = (torch.einsum("bchw,cr->brhw", latents, weights) + bias[None, :, None, None]).clamp(-1, 1)
    assert projected.shape == (2, 3, 5, 7)
    torch.testing.assert_close(projected, expected, atol=1e-4, rtol=1e-4)


def test_a_preview_is_a_small_jpeg_of_the_forming_image() -> None:
    red = torch.zeros(3, 600, 300)
    red[0] = 1.0  # full red, -1 elsewhere
    red[1:] = -1.0
    uri = preview_data_uri(preview_pixels(shrunk(red[None])[0]))
    header, encoded = uri.split(",", 1)
    assert header == "data:image/jpeg;base64"
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "JPEG" and max(image.size) == PREVIEW_MAX_SIDE
    assert image.size == (128, 256)
    r, g, b = image.convert("RGB").getpixel((64, 128))
    assert r > 240 and g < 15 and b < 15


def _context(renderer: PreviewRenderer) -> WorkerRunContext:
    return WorkerRunContext("job", "", storage=None, safety=None, previews=renderer)  # type: ignore[arg-type]


def _recording(formed: list[int], step: int) -> Any:
    def forming() -> torch.Tensor:
        formed.append(step)
        return torch.zeros(3, 2, 2)

    return forming


def _drained(ctx: WorkerRunContext) -> WorkerRunContext:
    """Once every preview handed to the encoder thread is done."""
    if ctx.previews._executor is not None:
        ctx.previews._executor.submit(lambda: None).result(timeout=10)
    return ctx


def test_previews_come_every_n_steps_never_at_the_last_and_off_at_zero() -> None:
    for every, expected in ((4, [4, 8]), (0, [])):  # 12 is the last step: the result follows at once
        ctx, formed = _context(PreviewRenderer(every)), []
        for step in range(1, 13):
            ctx.preview(step, 12, _recording(formed, step))
            _drained(ctx)
        assert formed == expected


def test_a_busy_encoder_skips_previews_instead_of_queueing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_encode(pixels: Any) -> str:
        release.wait(5)
        return "data:image/jpeg;base64,AA=="

    monkeypatch.setattr("hidream_service.inference.previews.preview_data_uri", slow_encode)
    ctx, formed = _context(PreviewRenderer(1)), []
    for step in (1, 2, 3):
        ctx.preview(step, 10, _recording(formed, step))
    assert formed == [1]  # steps 2 and 3 came while step 1 was still being encoded
    release.set()
    _, _, preview = _drained(ctx).take_events()
    assert preview is not None and preview.step == 1
    ctx.preview(4, 10, _recording(formed, 4))
    assert formed == [1, 4]
