"""HiDream-O1-Image: fal's input schemas (text-to-image and edit, Full and Dev), the weights, the runner.

O1 renders one of eleven presets up to 2K (2048x2048, 2560x1440, ...): `image_size` chooses the
aspect ratio and snaps to the closest preset, unless `keep_original_aspect` is set with exactly one
reference, which then gives the output its own aspect ratio. One reference edits it; several are
subjects to personalize with. The algorithm lives in hidream_service/inference/hidream_o1/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from hidream_service.inference.hidream_o1.recipes import DEV, FULL, RECIPES, Recipe
from hidream_service.inference.sources import WeightSource
from hidream_service.inference.weights import WeightsError, WeightsLayout
from hidream_service.models.base import InputError, JobCancelled, RunContext, Runner, StrictInput
from hidream_service.models.family import Endpoint, ModelFamily, Task
from hidream_service.models.loras import RefusesLoras
from hidream_service.models.running import MAX_SEED, image_result, seed_for, step_reporter
from hidream_service.models.sizes import MAX_IMAGE_URL_LENGTH, ImageSize, ImageSizeName, requested_size, too_elongated

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import LoadedPipeline, PipelineCache

# Pinned revisions (see inference/sources.py). They come from a third party's record of the
# checkpoints it converted, not from the hub itself: confirm them against each repository's history
# before a production deployment.
HIDREAM_O1_IMAGE_REVISION = "0b0901d99f200389e138c61946af1185f5f49a13"
HIDREAM_O1_IMAGE_DEV_REVISION = "c0bada0e15c54a9f96a6d1ecc35575b32bc21544"
# O1 is one self-contained Qwen3-VL checkpoint: no VAE, no separate text encoder, no Llama.
SOURCES = {
    FULL.key: WeightSource(FULL.repository, FULL.directory, revision=HIDREAM_O1_IMAGE_REVISION),
    DEV.key: WeightSource(DEV.repository, DEV.directory, revision=HIDREAM_O1_IMAGE_DEV_REVISION),
}
#: `download_weights --model NAME` / `hidream weights download NAME`, by model key.
DOWNLOAD_NAMES = {FULL.key: "hidream-o1-image", DEV.key: "hidream-o1-image-dev"}
#: What an O1 folder needs besides its safetensors (one file, or shards with an index).
O1_FILES = ("config.json", "tokenizer.json", "preprocessor_config.json")
O1_WEIGHTS = ("model.safetensors.index.json", "model.safetensors")

#: References one request may carry; the release shrinks each as there are more (a quarter side past 8).
MAX_REFERENCES = 10
#: fal's default output size: the 2K square.
DEFAULT_SIZE = ImageSize(width=2048, height=2048)


class _O1InputBase(RefusesLoras):
    lora_refusal = (
        "HiDream-O1 takes no LoRAs: it is a Qwen3-VL network, not the HiDream transformer LoRAs are made for; "
        "use a HiDream-I1 or HiDream-E1 endpoint"
    )

    prompt: str = Field(
        min_length=1, max_length=10_000, description="What to draw, how to edit, or what to do with the subjects."
    )
    image_size: ImageSizeName | ImageSize = Field(
        default=DEFAULT_SIZE, description="A preset name or {width, height}: snapped to the closest supported size."
    )
    num_inference_steps: int = Field(default=FULL.steps, ge=1, le=50)
    guidance_scale: float = Field(default=FULL.guidance, ge=0.0, le=20.0, description="Above 1 turns on CFG.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Same seed, same image.")
    num_images: int = Field(default=1, ge=1, le=4)
    enable_safety_checker: bool = True
    output_format: str = Field(default="jpeg", pattern="^(jpeg|png|webp)$")
    sync_mode: bool = Field(default=False, description="Return data URIs instead of stored file URLs.")


ReferenceUrl = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_URL_LENGTH)]


class _EditFields(StrictInput):
    reference_image_urls: list[ReferenceUrl] = Field(
        min_length=1,
        max_length=MAX_REFERENCES,
        description="One image to edit, or several subjects to personalize with: http(s) URLs, data URIs, "
        "or URLs of files uploaded here.",
    )
    keep_original_aspect: bool = Field(
        default=False,
        description="With exactly one reference, render at its aspect ratio instead of snapping image_size.",
    )


class HiDreamO1Input(_O1InputBase):
    """fal-ai/hidream-o1-image: text to image with the Full model (50 steps, CFG 5)."""


class HiDreamO1EditInput(_O1InputBase, _EditFields):
    """fal-ai/hidream-o1-image/edit: editing (one reference) or personalization (several)."""


class HiDreamO1DevInput(_O1InputBase):
    """fal-ai/hidream-o1-image/dev: the distilled model, 28 steps without CFG."""

    num_inference_steps: int = Field(default=DEV.steps, ge=1, le=DEV.steps)
    guidance_scale: float = Field(default=DEV.guidance, ge=0.0, le=20.0, description="Above 1 turns on CFG.")


class HiDreamO1DevEditInput(HiDreamO1DevInput, _EditFields):
    """fal-ai/hidream-o1-image/dev/edit."""


class HiDreamO1Runner:
    """Runs one O1 checkpoint, text-to-image or with references."""

    def __init__(self, recipe: Recipe, pipelines: Callable[[], PipelineCache]) -> None:
        self.recipe = recipe
        self.pipelines = pipelines

    def __call__(self, params: _O1InputBase, ctx: RunContext) -> dict[str, Any]:
        from hidream_service.inference.hidream_o1.sequence import CaptionError

        references = self._references(params, ctx)
        pipeline = self.pipelines().get(self.recipe.key).pipeline
        want_w, want_h = requested_size(params.image_size)
        keep_aspect = isinstance(params, _EditFields) and params.keep_original_aspect
        plan = pipeline.plan(want_w, want_h, references, keep_original_aspect=keep_aspect)
        ctx.log(_size_note(want_w, want_h, plan, references))
        seed = params.seed if params.seed is not None else seed_for(ctx.job_id)
        started = time.perf_counter()
        try:
            images = pipeline(
                params.prompt,
                plan,
                steps=params.num_inference_steps,
                guidance_scale=params.guidance_scale,
                seed=seed,
                count=params.num_images,
                on_step=step_reporter(ctx),
            )
        except CaptionError as exc:
            raise InputError(str(exc)) from None
        if ctx.cancelled():
            raise JobCancelled()
        inference_seconds = time.perf_counter() - started
        return image_result(ctx, images, params, seed=seed, prompt=params.prompt, inference_seconds=inference_seconds)

    def _references(self, params: _O1InputBase, ctx: RunContext) -> list[Any]:
        if not isinstance(params, _EditFields):
            return []
        images = [ctx.load_image(url) for url in params.reference_image_urls]
        for index, image in enumerate(images):
            problem = too_elongated(image.width, image.height, f"reference image {index}")
            if problem is not None:  # refused at submit already; this guards jobs from anywhere else
                raise InputError(f"{problem}; crop it first")
        return images


def _size_note(want_w: int, want_h: int, plan: Any, references: list[Any]) -> str:
    sizes = ", ".join(f"{image.width}x{image.height}" for image in plan.references)
    made = f"{plan.width}x{plan.height}"
    if plan.kept_aspect:
        note = f"output {made}, the reference's aspect ratio (keep_original_aspect)"
    elif (plan.width, plan.height) != (want_w, want_h):
        note = f"requested {want_w}x{want_h}; O1 renders the closest preset, {made}"
    else:
        note = f"output {made}"
    if references:
        note += f"; {len(references)} reference(s) at {sizes}"
    return note


class HiDreamO1Family(ModelFamily):
    """HiDream-O1-Image and -Dev: one Qwen3-VL checkpoint folder each, text-to-image and editing."""

    name = "hidream-o1"
    models = tuple(RECIPES)

    def __init__(self) -> None:
        self.endpoints = (
            self.endpoint(
                "fal-ai/hidream-o1-image", "HiDream-O1-Image", HiDreamO1Input, Task.TEXT_TO_IMAGE, FULL.key,
                replicate="hidream-ai/hidream-o1-image", wavespeed="wavespeed-ai/hidream-o1-image-text-to-image",
                openai="hidream-o1-image",
            ),
            self.endpoint(
                "fal-ai/hidream-o1-image/edit", "HiDream-O1-Image editing and personalization", HiDreamO1EditInput,
                Task.REFERENCE_EDIT, FULL.key, openai="hidream-o1-image",
            ),
            self.endpoint(
                "fal-ai/hidream-o1-image/dev", "HiDream-O1-Image Dev", HiDreamO1DevInput, Task.TEXT_TO_IMAGE, DEV.key,
                replicate="hidream-ai/hidream-o1-image-dev",
                wavespeed="wavespeed-ai/hidream-o1-image-dev-text-to-image", openai="hidream-o1-image-dev",
            ),
            self.endpoint(
                "fal-ai/hidream-o1-image/dev/edit", "HiDream-O1-Image Dev editing and personalization",
                HiDreamO1DevEditInput, Task.REFERENCE_EDIT, DEV.key, openai="hidream-o1-image-dev",
            ),
        )  # fmt: skip

    # -- weights ---------------------------------------------------------------------------------

    def sources(self) -> Mapping[str, tuple[WeightSource, ...]]:
        return {name: self.model_sources(key) for key, name in DOWNLOAD_NAMES.items()}

    def model_sources(self, model: str) -> tuple[WeightSource, ...]:
        return (SOURCES[model],)

    def available_models(self, layout: WeightsLayout) -> set[str]:
        return {key for key, recipe in RECIPES.items() if _folder_problem(layout, recipe) is None}

    def check_weights(self, layout: WeightsLayout, model: str) -> None:
        from hidream_service.inference.manifest import verify_directory

        recipe = RECIPES[model]
        verify_directory(SOURCES[model], layout.root)  # a downloaded folder must match its lock entry
        problem = _folder_problem(layout, recipe)
        if problem is not None:
            raise WeightsError(problem)

    def build_tiny(self, root: Path) -> None:
        from hidream_service.inference.hidream_o1.tiny import build_tiny_o1

        for index, recipe in enumerate(RECIPES.values()):
            build_tiny_o1(root / recipe.directory, seed=4000 + index)  # Full and Dev get their own weights

    # -- running ---------------------------------------------------------------------------------

    def load(self, model: str, pipelines: PipelineCache) -> LoadedPipeline:
        from hidream_service.inference.pipelines import load_o1

        recipe = RECIPES[model]
        layout = pipelines.layout
        return load_o1(
            layout.directory(recipe.directory), recipe, pipelines.device, layout.service_metadata(recipe.directory)
        )

    def runner(self, endpoint: Endpoint, pipelines: Callable[[], PipelineCache]) -> Runner:
        assert endpoint.model is not None
        return HiDreamO1Runner(RECIPES[endpoint.model], pipelines)


def _folder_problem(layout: WeightsLayout, recipe: Recipe) -> str | None:
    directory = layout.directory(recipe.directory)
    missing = [name for name in O1_FILES if not (directory / name).is_file()]
    if not any((directory / name).is_file() for name in O1_WEIGHTS):
        missing.append(" or ".join(O1_WEIGHTS))
    if not missing:
        return None
    return f"{directory} lacks {', '.join(missing)}: put the files of {recipe.repository} there"


HIDREAM_O1 = HiDreamO1Family()
