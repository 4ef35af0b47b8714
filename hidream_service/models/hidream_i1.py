"""HiDream-I1 text-to-image (Full, Dev, Fast): fal's input schema, per-variant recipes, the runner.

HiDream renders at a fixed pixel area (1024x1024 for the real weights): `image_size` chooses the
aspect ratio, and the pipeline scales it to that area in multiples of 16. We compute the real output
size up front, log it and report it; we never pretend the requested size was made.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hidream_service.inference.denoising import step_noise_from
from hidream_service.inference.image_to_image import steps_to_run
from hidream_service.models.base import JobCancelled, RunContext, StrictInput
from hidream_service.models.running import MAX_SEED, generators_for, image_result, seed_for, step_reporter

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import PipelineCache

MAX_IMAGE_URL_LENGTH = 30 << 20  # a data URI of the largest image input, base64
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
        check_aspect_ratio(*requested_size(self.image_size))
        return self


class HiDreamI1FullInput(_I1InputBase):
    """Full: 50 steps with CFG 5.0 (the base defaults)."""


class HiDreamI1DevInput(_I1InputBase):
    num_inference_steps: int = Field(default=28, ge=1, le=50)
    guidance_scale: float = Field(default=0.0, ge=0.0, le=20.0)


class HiDreamI1FastInput(_I1InputBase):
    num_inference_steps: int = Field(default=16, ge=1, le=50)
    guidance_scale: float = Field(default=0.0, ge=0.0, le=20.0)


class HiDreamI1ImageToImageInput(_I1InputBase):
    """fal-ai/hidream-i1-full/image-to-image: the Full recipe started from an image."""

    prompt: str = Field(min_length=1, max_length=10_000, description="What the image should become.")
    image_url: str = Field(
        min_length=1,
        max_length=MAX_IMAGE_URL_LENGTH,
        description="The starting image: an http(s) URL, a data URI, or a URL of a file uploaded here.",
    )
    strength: float = Field(
        default=0.75,
        gt=0.0,
        le=1.0,
        description="How much to change the image: the share of the schedule that is run (1.0 ignores it).",
    )
    image_size: ImageSizeName | ImageSize | None = Field(  # type: ignore[assignment]
        default=None, description="Output aspect ratio; unset keeps the input image's."
    )

    @model_validator(mode="after")
    def _aspect_ratio_in_range(self) -> HiDreamI1ImageToImageInput:
        if self.image_size is not None:
            check_aspect_ratio(*requested_size(self.image_size))
        return self

    @model_validator(mode="after")
    def _at_least_one_step(self) -> HiDreamI1ImageToImageInput:
        if steps_to_run(self.num_inference_steps, self.strength) < 1:
            raise ValueError(
                f"strength {self.strength} of {self.num_inference_steps} steps is less than one step; "
                "raise strength or num_inference_steps"
            )
        return self


INPUT_MODELS: dict[str, type[_I1InputBase]] = {
    "full": HiDreamI1FullInput,
    "dev": HiDreamI1DevInput,
    "fast": HiDreamI1FastInput,
}


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


def requested_size(size: ImageSizeName | ImageSize) -> tuple[int, int]:
    if isinstance(size, ImageSize):
        return size.width, size.height
    return IMAGE_SIZE_PRESETS[size]


def rendered_size(width: int, height: int, area_side: int, multiple: int = 16) -> tuple[int, int]:
    """The size HiDreamImagePipeline really renders: the aspect ratio scaled to area_side**2,
    each side rounded down to `multiple` (diffusers 0.42 pipeline_hidream_image.py, __call__)."""
    scale = math.sqrt(area_side**2 / (width * height))
    return int(width * scale // multiple * multiple), int(height * scale // multiple * multiple)


class HiDreamI1Runner:
    """Runs one I1 variant through diffusers' HiDreamImagePipeline."""

    def __init__(self, variant: Variant, pipelines: PipelineCache) -> None:
        self.variant = variant
        self.pipelines = pipelines

    def __call__(self, inputs: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        (outcome,) = self.run_batch([(inputs, ctx)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def batch_key(self, inputs: dict[str, Any]) -> Hashable | None:
        """Jobs that differ only in prompt, seed and output options can share one pipeline call."""
        try:
            params = INPUT_MODELS[self.variant.name].model_validate(inputs)
        except ValidationError:
            return None
        size = requested_size(params.image_size)
        return (size, params.num_inference_steps, params.guidance_scale, params.num_images, params.negative_prompt)

    def run_batch(self, jobs: list[tuple[dict[str, Any], RunContext]]) -> list[dict[str, Any] | Exception]:
        """One pipeline call for every job (prompts as a batch); each job keeps its own seeds, so its
        images are those it would get alone, up to float reduction order."""
        model = INPUT_MODELS[self.variant.name]
        params = [model.model_validate(inputs) for inputs, _ in jobs]
        contexts = [ctx for _, ctx in jobs]
        first = params[0]
        loaded = self.pipelines.get(self.variant.name)
        pipe = loaded.pipeline
        want_w, want_h = requested_size(first.image_size)
        width, height = rendered_size(want_w, want_h, loaded.area_side, 2 * loaded.vae_scale_factor)
        seeds = [
            p.seed if p.seed is not None else seed_for(ctx.job_id) for p, ctx in zip(params, contexts, strict=True)
        ]
        for ctx in contexts:
            if (width, height) != (want_w, want_h):
                ctx.log(
                    f"requested {want_w}x{want_h}; HiDream renders a fixed {loaded.area_side}x{loaded.area_side} "
                    f"area, so the output is {width}x{height}"
                )
            if len(jobs) > 1:
                ctx.log(f"batched with {len(jobs) - 1} other job(s) in one pipeline call")
        generators = [g for seed in seeds for g in generators_for(seed, first.num_images)]
        reporters = [step_reporter(ctx) for ctx in contexts]

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            stops = [report(step, first.num_inference_steps) for report in reporters]
            if all(stops):
                pipeline._interrupt = True  # diffusers skips the remaining steps
            return tensors

        started = time.perf_counter()
        with step_noise_from(pipe.scheduler, generators):
            result = pipe(
                prompt=[p.prompt for p in params],
                negative_prompt=[first.negative_prompt] * len(params) if first.negative_prompt else None,
                height=want_h,
                width=want_w,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                num_images_per_prompt=first.num_images,
                generator=generators,
                callback_on_step_end=on_step_end,
                output_type="pil",
            )
        inference_seconds = time.perf_counter() - started
        images = list(result.images)
        for image in images:
            if image.size != (width, height):
                raise RuntimeError(f"pipeline rendered {image.size}, expected {(width, height)}")
        outcomes: list[dict[str, Any] | Exception] = []
        for index, (p, ctx, seed) in enumerate(zip(params, contexts, seeds, strict=True)):
            if ctx.cancelled():
                outcomes.append(JobCancelled())
                continue
            mine = images[index * first.num_images : (index + 1) * first.num_images]
            outcomes.append(_output(ctx, p, mine, seed, inference_seconds))
        return outcomes


class HiDreamI1ImageToImageRunner:
    """I1 image-to-image: the I1 loop started from the input image noised to `strength`."""

    def __init__(self, variant: Variant, pipelines: PipelineCache) -> None:
        self.variant = variant
        self.pipelines = pipelines

    def __call__(self, inputs: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        from hidream_service.inference.image_to_image import image_to_image

        params = HiDreamI1ImageToImageInput.model_validate(inputs)
        loaded = self.pipelines.get(self.variant.name)
        source = ctx.load_image(params.image_url)
        want_w, want_h = requested_size(params.image_size) if params.image_size is not None else source.size
        width, height = rendered_size(want_w, want_h, loaded.area_side, 2 * loaded.vae_scale_factor)
        ctx.log(f"input image {source.width}x{source.height}, output {width}x{height}")
        seed = params.seed if params.seed is not None else seed_for(ctx.job_id)
        started = time.perf_counter()
        images = image_to_image(
            loaded.pipeline,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            image=cover_and_crop(source, width, height),
            strength=params.strength,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            generators=generators_for(seed, params.num_images),
            on_step=step_reporter(ctx),
        )
        if ctx.cancelled():
            raise JobCancelled()
        return _output(ctx, params, images, seed, time.perf_counter() - started)


def cover_and_crop(image: Any, width: int, height: int) -> Any:
    """Scale the image to cover width x height, then crop the centre: no stretching."""
    from PIL import Image

    cover = max(width / image.width, height / image.height)
    scaled = image.resize(
        (max(width, round(image.width * cover)), max(height, round(image.height * cover))),
        resample=Image.Resampling.BICUBIC,
    )
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _output(ctx: RunContext, params: Any, images: list[Any], seed: int, inference_seconds: float) -> dict[str, Any]:
    return image_result(ctx, images, params, seed=seed, prompt=params.prompt, inference_seconds=inference_seconds)
