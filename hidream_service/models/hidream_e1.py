"""HiDream-E1 instruction editing endpoints: fal's input schema, and the runner.

fal-ai/hidream-e1-full edits at 768x768 (the whole image squeezed to a square, as the official
script does) and the result is resized back to the source's aspect ratio at that pixel count.
fal-ai/hidream-e1-1 edits at about 1 MP in the source's aspect ratio. The algorithm lives in
hidream_service/inference/hidream_e1.py.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hidream_service.models.base import InputError, JobCancelled, RunContext, StrictInput
from hidream_service.models.hidream_i1 import MAX_IMAGE_URL_LENGTH, too_elongated
from hidream_service.models.running import MAX_SEED, generators_for, image_result, seed_for, step_reporter

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import PipelineCache

E1_FULL = "e1-full"
E1_1 = "e1-1"


class _E1InputBase(StrictInput):
    image_url: str = Field(
        min_length=1,
        max_length=MAX_IMAGE_URL_LENGTH,
        description="The image to edit: an http(s) URL, a data URI, or a URL of a file uploaded here.",
    )
    edit_instruction: str = Field(min_length=1, max_length=10_000, description="What to change, e.g. 'make it snow'.")
    target_image_description: str | None = Field(
        default=None,
        max_length=10_000,
        description="What the edited image shows. Sharpens the edit and drives the refine stage.",
    )
    negative_prompt: str = Field(default="low resolution, blur", max_length=10_000)
    num_inference_steps: int = Field(default=50, ge=1, le=50)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Same seed, same image.")
    guidance_scale: float = Field(default=3.5, ge=0.0, le=20.0, description="Text guidance; above 1 turns on CFG.")
    image_guidance_scale: float = Field(
        default=2.0, ge=0.0, le=20.0, description="How closely the result keeps to the source image."
    )
    refine_strength: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="Share of the last steps spent refining from the target description alone (0 turns it off).",
    )
    num_images: int = Field(default=1, ge=1, le=4)
    enable_safety_checker: bool = True
    output_format: str = Field(default="jpeg", pattern="^(jpeg|png|webp)$")
    sync_mode: bool = Field(default=False, description="Return data URIs instead of stored file URLs.")


class HiDreamE1FullInput(_E1InputBase):
    """fal-ai/hidream-e1-full."""


class HiDreamE1_1Input(_E1InputBase):
    """fal-ai/hidream-e1-1, with the official E1.1 script's recommended settings as defaults."""

    negative_prompt: str = Field(default="low quality, blurry, distorted", max_length=10_000)
    num_inference_steps: int = Field(default=28, ge=1, le=50)
    guidance_scale: float = Field(default=3.0, ge=0.0, le=20.0, description="Text guidance; above 1 turns on CFG.")
    image_guidance_scale: float = Field(
        default=1.5, ge=0.0, le=20.0, description="How closely the result keeps to the source image."
    )


INPUT_MODELS: dict[str, type[_E1InputBase]] = {E1_FULL: HiDreamE1FullInput, E1_1: HiDreamE1_1Input}


def same_area_size(width: int, height: int, area: int) -> tuple[int, int]:
    """width x height scaled to about `area` pixels, keeping the aspect ratio."""
    scale = math.sqrt(area / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class HiDreamE1Runner:
    def __init__(self, model: str, pipelines: PipelineCache) -> None:
        self.model = model
        self.pipelines = pipelines

    def __call__(self, inputs: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        from hidream_service.inference.hidream_e1 import edit, edit_prompt, resize_to_square
        from hidream_service.inference.resizing import resize_to_area

        params = INPUT_MODELS[self.model].model_validate(inputs)
        loaded = self.pipelines.get(self.model)
        source = ctx.load_image(params.image_url)
        problem = too_elongated(source.width, source.height, "the image")
        if problem is not None:  # refused at submit already; this guards jobs from anywhere else
            raise InputError(f"{problem}; crop it first")
        side = loaded.area_side
        if self.model == E1_FULL:
            model_input = resize_to_square(source, side)
            output_size = same_area_size(source.width, source.height, side * side)
        else:
            model_input = resize_to_area(source, side, 2 * loaded.vae_scale_factor)
            output_size = model_input.size
        ctx.log(f"source {source.width}x{source.height}, edited at {model_input.width}x{model_input.height}")
        prompt = edit_prompt(params.edit_instruction, params.target_image_description)
        seed = params.seed if params.seed is not None else seed_for(ctx.job_id)
        started = time.perf_counter()
        images = edit(
            loaded.pipeline,
            prompt=prompt,
            negative_prompt=params.negative_prompt,
            image=model_input,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            image_guidance_scale=params.image_guidance_scale,
            refine_strength=params.refine_strength,
            generators=generators_for(seed, params.num_images),
            refine=loaded.refine,
            on_step=step_reporter(ctx),
        )
        if ctx.cancelled():
            raise JobCancelled()
        inference_seconds = time.perf_counter() - started
        images = [_resized(image, output_size) for image in images]
        return image_result(ctx, images, params, seed=seed, prompt=prompt, inference_seconds=inference_seconds)


def _resized(image: Any, size: tuple[int, int]) -> Any:
    from PIL import Image

    return image if image.size == size else image.resize(size, resample=Image.Resampling.BICUBIC)
