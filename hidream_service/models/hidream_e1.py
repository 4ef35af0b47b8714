"""HiDream-E1 instruction editing (E1-Full, E1.1): fal's input schemas, the weights, the runner.

fal-ai/hidream-e1-full edits at 768x768 (the whole image squeezed to a square, as the official
script does), fal-ai/hidream-e1-1 at about 1 MP in the source's aspect ratio. Both return the edit at
the source's size, as the official scripts do, unless that has more pixels than the model rendered
(`output_size`). Both run on HiDream-I1-Full's components (VAE, text encoders, scheduler) around
their own transformer weights. The algorithm lives in hidream_service/inference/hidream_e1.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, Field

from hidream_service.inference.recipes import E1_1, E1_FULL, EDIT_RECIPES, FULL, EditRecipe
from hidream_service.inference.sources import WeightSource
from hidream_service.inference.weights import WeightsError, WeightsLayout
from hidream_service.models import hidream_i1
from hidream_service.models.base import InputError, JobCancelled, RunContext, Runner
from hidream_service.models.family import Endpoint, ModelFamily, Task
from hidream_service.models.hidream_i1 import LLAMA_3_1_8B_INSTRUCT, check_i1_weights, sample_size_of, shared_llama
from hidream_service.models.loras import Loras, TakesLoras, loras_applied
from hidream_service.models.running import MAX_SEED, generators_for, image_result, seed_for, step_reporter
from hidream_service.models.sizes import MAX_IMAGE_URL_LENGTH, too_elongated

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import LoadedPipeline, PipelineCache

# No revision is pinned in code (see inference/sources.py): each is resolved at the first download
# and kept in the weights root's lock file. Only E1's own weights are fetched; everything else is
# HiDream-I1-Full's (HiDream-ai/HiDream-E1 inference.py, inference_e1_1.py).
SOURCES = {
    E1_FULL.key: WeightSource(E1_FULL.repository, E1_FULL.directory, allow_patterns=(E1_FULL.weights,)),
    E1_1.key: WeightSource(E1_1.repository, E1_1.directory, allow_patterns=(f"{E1_1.weights}/*",)),
}


class _E1InputBase(TakesLoras):
    image_url: str = Field(
        min_length=1,
        max_length=MAX_IMAGE_URL_LENGTH,
        description="The image to edit: an http(s) URL, a data URI, or a URL of a file uploaded here.",
    )
    # fal's E1 endpoints call the instruction `prompt` (what fal's clients send); `edit_instruction`,
    # this service's earlier name, is still accepted.
    edit_instruction: str = Field(
        min_length=1,
        max_length=10_000,
        validation_alias=AliasChoices("prompt", "edit_instruction"),
        description="The edit instruction: what to change, e.g. 'make it snow'.",
    )
    target_image_description: str | None = Field(
        default=None,
        max_length=10_000,
        description=(
            "What the edited image shows. Sharpens the edit and drives the refine stage; "
            "left blank, the model uses its own imagination."
        ),
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
    # On in the edit stage and in the refine stage alike (inference/loras.py says why).
    loras: Loras = []  # pydantic copies it for each input


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


def same_area_size(width: int, height: int, area: int) -> tuple[int, int]:
    """width x height scaled to about `area` pixels, keeping the aspect ratio."""
    scale = math.sqrt(area / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def output_size(source: tuple[int, int], rendered: tuple[int, int]) -> tuple[int, int]:
    """The size an edit is returned at: the source's, as the official scripts resize it back, unless
    the source has more pixels than the model rendered; then the source's aspect ratio at the rendered
    pixel count, so that the result is never enlarged past the model's resolution."""
    width, height = source
    area = rendered[0] * rendered[1]
    if width * height <= area:
        return source
    return same_area_size(width, height, area)


class HiDreamE1Runner:
    def __init__(self, recipe: EditRecipe, pipelines: Callable[[], PipelineCache]) -> None:
        self.recipe = recipe
        self.pipelines = pipelines

    def __call__(self, params: _E1InputBase, ctx: RunContext) -> dict[str, Any]:
        from hidream_service.inference.hidream_e1 import edit, edit_prompt, resize_to_square
        from hidream_service.inference.resizing import resize_to_area

        loaded = self.pipelines().get(self.recipe.key)
        source = ctx.load_image(params.image_url)
        problem = too_elongated(source.width, source.height, "the image")
        if problem is not None:  # refused at submit already; this guards jobs from anywhere else
            raise InputError(f"{problem}; crop it first")
        side = loaded.area_side
        if self.recipe.square:
            model_input = resize_to_square(source, side)
        else:
            model_input = resize_to_area(source, side, 2 * loaded.vae_scale_factor)
        returned_size = output_size(source.size, model_input.size)
        ctx.log(f"source {source.width}x{source.height}, edited at {model_input.width}x{model_input.height}")
        prompt = edit_prompt(
            params.edit_instruction, params.target_image_description, always_formatted=self.recipe.always_formatted
        )
        seed = params.seed if params.seed is not None else seed_for(ctx.job_id)
        started = time.perf_counter()
        with loras_applied(self.pipelines(), loaded.pipeline, params, [ctx], refine=loaded.refine):
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
        images = [_resized(image, returned_size) for image in images]
        return image_result(ctx, images, params, seed=seed, prompt=prompt, inference_seconds=inference_seconds)


def _resized(image: Any, size: tuple[int, int]) -> Any:
    from PIL import Image

    return image if image.size == size else image.resize(size, resample=Image.Resampling.BICUBIC)


class HiDreamE1Family(ModelFamily):
    """HiDream-E1-Full (a LoRA over I1-Full) and E1.1 (a transformer), on I1-Full's components."""

    name = "hidream-e1"
    models = tuple(EDIT_RECIPES)

    def __init__(self) -> None:
        self.endpoints = (
            self.endpoint(
                "fal-ai/hidream-e1-full", "HiDream-E1 Full instruction editing", HiDreamE1FullInput,
                Task.INSTRUCTION_EDIT, E1_FULL.key, replicate="hidream-ai/hidream-e1-full",
                wavespeed="wavespeed-ai/hidream-e1-full", openai="hidream-e1-full",
            ),
            self.endpoint(
                "fal-ai/hidream-e1-1", "HiDream-E1.1 instruction editing", HiDreamE1_1Input,
                Task.INSTRUCTION_EDIT, E1_1.key, replicate="hidream-ai/hidream-e1-1", openai="hidream-e1-1",
            ),
        )  # fmt: skip

    # -- weights ---------------------------------------------------------------------------------

    def sources(self) -> Mapping[str, tuple[WeightSource, ...]]:
        return {f"hidream-{key}": self.model_sources(key) for key in EDIT_RECIPES}

    def model_sources(self, model: str) -> tuple[WeightSource, ...]:
        # E1 edits with I1-Full's components around its own transformer (HiDream-ai/HiDream-E1 inference*.py).
        return (SOURCES[model], hidream_i1.SOURCES[FULL.name], LLAMA_3_1_8B_INSTRUCT)

    def available_models(self, layout: WeightsLayout) -> set[str]:
        if not (layout.directory(FULL.directory) / hidream_i1.INDEX).is_file():
            return set()
        return {key for key, recipe in EDIT_RECIPES.items() if _has_weights(layout, recipe)}

    def check_weights(self, layout: WeightsLayout, model: str) -> None:
        recipe = EDIT_RECIPES[model]
        weights = layout.directory(recipe.directory) / recipe.weights
        if recipe.lora and not weights.is_file():
            raise WeightsError(f"{weights} not found: put {recipe.repository}'s LoRA file there")
        if not recipe.lora and not weights.is_dir():
            raise WeightsError(f"{weights} not found: put {recipe.repository}'s transformer folder there")
        check_i1_weights(layout, FULL, also=(SOURCES[model],))

    def build_tiny(self, root: Path) -> None:
        from hidream_service.inference.tiny import build_tiny_e1

        build_tiny_e1(root, list(EDIT_RECIPES.values()))

    # -- running ---------------------------------------------------------------------------------

    def load(self, model: str, pipelines: PipelineCache) -> LoadedPipeline:
        from hidream_service.inference.pipelines import load_e1

        recipe = EDIT_RECIPES[model]
        layout = pipelines.layout
        return load_e1(
            layout.directory(FULL.directory),
            FULL,
            recipe,
            layout.directory(recipe.directory),
            pipelines.device,
            shared_llama(pipelines),
            sample_size_of(layout, recipe.directory, recipe.sample_size),
        )

    def runner(self, endpoint: Endpoint, pipelines: Callable[[], PipelineCache]) -> Runner:
        assert endpoint.model is not None
        return HiDreamE1Runner(EDIT_RECIPES[endpoint.model], pipelines)


def _has_weights(layout: WeightsLayout, recipe: EditRecipe) -> bool:
    weights = layout.directory(recipe.directory) / recipe.weights
    if recipe.lora:
        return weights.is_file()
    return (weights / "config.json").is_file() or any(weights.glob("*.safetensors"))


HIDREAM_E1 = HiDreamE1Family()
