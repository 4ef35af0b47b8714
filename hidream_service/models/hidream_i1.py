"""HiDream-I1 text-to-image (Full, Dev, Fast): fal's input schema, per-variant recipes, the runner.

HiDream renders at a fixed pixel area (1024x1024 for the real weights): `image_size` chooses the
aspect ratio, and the pipeline scales it to that area in multiples of 16. We compute the real output
size up front, log it and report it; we never pretend the requested size was made.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import inspect
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hidream_service.models.base import JobCancelled, RunContext, StrictInput

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import PipelineCache

MAX_SEED = 2**63 - 1
MAX_ASPECT_RATIO = 4.0  # 1 MP at 4:1 is 2048x512: the transformer's 128-patch limit per side


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


@dataclass(frozen=True)
class Variant:
    """One HiDream-I1 checkpoint's recipe (HiDream-ai/HiDream-I1 inference.py MODEL_CONFIGS)."""

    name: str
    directory: str  # sub-directory of the weights root
    steps: int
    guidance: float
    shift: float
    scheduler: str  # diffusers class name, as in the published scheduler config


VARIANTS: dict[str, Variant] = {
    "full": Variant("full", "HiDream-I1-Full", 50, 5.0, 3.0, "UniPCMultistepScheduler"),
    "dev": Variant("dev", "HiDream-I1-Dev", 28, 0.0, 6.0, "FlowMatchLCMScheduler"),
    "fast": Variant("fast", "HiDream-I1-Fast", 16, 0.0, 3.0, "FlowMatchLCMScheduler"),
}


class _I1InputBase(StrictInput):
    prompt: str = Field(min_length=1, max_length=10_000, description="What to draw.")
    negative_prompt: str = Field(default="", max_length=10_000, description="What to steer away from.")
    image_size: ImageSizeName | ImageSize = Field(
        default=ImageSizeName.SQUARE_HD,
        description="A preset name or {width, height}: sets the aspect ratio.",
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Same seed, same image.")
    num_images: int = Field(default=1, ge=1, le=4)
    enable_safety_checker: bool = True
    output_format: str = Field(default="jpeg", pattern="^(jpeg|png|webp)$")
    sync_mode: bool = Field(default=False, description="Return data URIs instead of stored file URLs.")
    num_inference_steps: int = Field(default=50, ge=1, le=50)
    guidance_scale: float = Field(default=5.0, ge=0.0, le=20.0, description="Above 1 turns on CFG.")

    @model_validator(mode="after")
    def _aspect_ratio_in_range(self) -> _I1InputBase:
        width, height = requested_size(self.image_size)
        if max(width / height, height / width) > MAX_ASPECT_RATIO:
            raise ValueError(
                f"image_size {width}x{height} is more elongated than {MAX_ASPECT_RATIO:g}:1, "
                "which HiDream cannot render"
            )
        return self


class HiDreamI1FullInput(_I1InputBase):
    """Full: 50 steps with CFG 5.0 (the base defaults)."""


class HiDreamI1DevInput(_I1InputBase):
    num_inference_steps: int = Field(default=28, ge=1, le=50)
    guidance_scale: float = Field(default=0.0, ge=0.0, le=20.0)


class HiDreamI1FastInput(_I1InputBase):
    num_inference_steps: int = Field(default=16, ge=1, le=50)
    guidance_scale: float = Field(default=0.0, ge=0.0, le=20.0)


INPUT_MODELS: dict[str, type[_I1InputBase]] = {
    "full": HiDreamI1FullInput,
    "dev": HiDreamI1DevInput,
    "fast": HiDreamI1FastInput,
}


def requested_size(size: ImageSizeName | ImageSize) -> tuple[int, int]:
    if isinstance(size, ImageSize):
        return size.width, size.height
    return IMAGE_SIZE_PRESETS[size]


def rendered_size(width: int, height: int, area_side: int, multiple: int = 16) -> tuple[int, int]:
    """The size HiDreamImagePipeline really renders: the aspect ratio scaled to area_side**2,
    each side rounded down to `multiple` (diffusers 0.42 pipeline_hidream_image.py, __call__)."""
    scale = math.sqrt(area_side**2 / (width * height))
    return int(width * scale // multiple * multiple), int(height * scale // multiple * multiple)


@contextlib.contextmanager
def _step_noise_from(scheduler: Any, generators: list[Any]) -> Iterator[None]:
    """Make a stochastic scheduler (FlowMatchLCM, used by Dev and Fast) draw its per-step noise from
    the per-image generators. The pipeline does not pass one, so it would draw from torch's global
    RNG and the same seed would give a different image on every call."""
    if "generator" not in inspect.signature(scheduler.step).parameters:
        yield
        return
    scheduler.step = functools.partial(type(scheduler).step, scheduler, generator=generators)
    try:
        yield
    finally:
        del scheduler.step


def seed_for(job_id: str) -> int:
    """The seed of a job that did not choose one: random per job, yet the same if the job runs again."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") % (MAX_SEED - 8)


class HiDreamI1Runner:
    """Runs one I1 variant through diffusers' HiDreamImagePipeline."""

    def __init__(self, variant: Variant, pipelines: PipelineCache) -> None:
        self.variant = variant
        self.pipelines = pipelines

    def __call__(self, inputs: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        import torch  # the worker is the only process that imports torch

        params = INPUT_MODELS[self.variant.name].model_validate(inputs)
        loaded = self.pipelines.get(self.variant)
        pipe = loaded.pipeline
        want_w, want_h = requested_size(params.image_size)
        width, height = rendered_size(want_w, want_h, loaded.area_side, 2 * loaded.vae_scale_factor)
        if (width, height) != (want_w, want_h):
            ctx.log(
                f"requested {want_w}x{want_h}; HiDream renders a fixed {loaded.area_side}x{loaded.area_side} "
                f"area, so the output is {width}x{height}"
            )
        seed = params.seed if params.seed is not None else seed_for(ctx.job_id)
        # One generator per image: image i depends only on seed + i, not on how many were asked for.
        generators = [
            torch.Generator(device="cpu").manual_seed((seed + index) % 2**64) for index in range(params.num_images)
        ]
        total = params.num_inference_steps
        if not params.enable_safety_checker:
            ctx.log("safety checker disabled by request")

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            ctx.log(f"step {step + 1}/{total}")
            if ctx.cancelled():
                pipeline._interrupt = True  # diffusers skips the remaining steps
            return tensors

        started = time.perf_counter()
        with _step_noise_from(pipe.scheduler, generators):
            result = pipe(
                prompt=params.prompt,
                negative_prompt=params.negative_prompt or None,
                height=want_h,
                width=want_w,
                num_inference_steps=total,
                guidance_scale=params.guidance_scale,
                num_images_per_prompt=params.num_images,
                generator=generators,
                callback_on_step_end=on_step_end,
                output_type="pil",
            )
        if ctx.cancelled():
            raise JobCancelled()
        inference_seconds = time.perf_counter() - started
        images = list(result.images)
        for image in images:
            if image.size != (width, height):
                raise RuntimeError(f"pipeline rendered {image.size}, expected {(width, height)}")
        files = [
            ctx.save_image(index, image, params.output_format, sync_mode=params.sync_mode)
            for index, image in enumerate(images)
        ]
        return {
            "images": [file.model_dump() for file in files],
            "seed": seed,
            # No classifier runs yet: nothing is flagged, whatever enable_safety_checker says.
            "has_nsfw_concepts": [False] * len(files),
            "prompt": params.prompt,
            "timings": {"inference": inference_seconds},
        }
