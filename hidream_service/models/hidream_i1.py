"""HiDream-I1 (Full, Dev, Fast): text-to-image and image-to-image, fal's input schemas, the weights
the family loads and the runners.

HiDream renders at a fixed pixel area (1024x1024 for the real weights): `image_size` chooses the
aspect ratio, and the pipeline scales it to that area in multiples of 16. We compute the real output
size up front, log it and report it; we never pretend the requested size was made.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from hidream_service.inference.denoising import step_noise_from
from hidream_service.inference.image_to_image import steps_to_run
from hidream_service.inference.previews import latent_previews
from hidream_service.inference.recipes import LLAMA_DIRECTORY, REAL_SAMPLE_SIZE, VARIANTS, Variant
from hidream_service.inference.sources import WeightSource
from hidream_service.inference.weights import (
    WeightsError,
    WeightsLayout,
    diffusers_folder_problem,
    folder_weights_problem,
    misnamed_folder,
)
from hidream_service.models.base import JobCancelled, RunContext, Runner
from hidream_service.models.family import Endpoint, ModelFamily, Task
from hidream_service.models.loras import Loras, TakesLoras, loras_applied
from hidream_service.models.running import MAX_SEED, generators_for, image_result, seed_for, step_reporter
from hidream_service.models.sizes import (
    MAX_IMAGE_URL_LENGTH,
    ImageSize,
    ImageSizeName,
    check_aspect_ratio,
    requested_size,
    too_elongated,
)

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import LoadedPipeline, PipelineCache

# Revisions (see inference/sources.py). The Llama encoder's commit is on public record, so it is
# pinned here; the I1 repositories' are resolved at their first download and kept in the weights
# root's lock file.
LLAMA_3_1_8B_INSTRUCT_REVISION = "0e9e39f249a16976918f6564b8830bc894c89659"
#: What an I1 pipeline loads of its repository (docs/weights.md): the diffusers folders, not the
#: README's images.
I1_FILES = (
    "model_index.json",
    "scheduler/*",
    "transformer/*",
    "vae/*",
    "text_encoder/*",
    "tokenizer/*",
    "text_encoder_2/*",
    "tokenizer_2/*",
    "text_encoder_3/*",
    "tokenizer_3/*",
)
SOURCES = {
    name: WeightSource(variant.repository, variant.directory, allow_patterns=I1_FILES)
    for name, variant in VARIANTS.items()
}
# text_encoder_4 of every HiDream pipeline; gated by Meta's licence. Not original/ (the
# consolidated .pth checkpoint, which transformers does not load), nor the licence texts.
LLAMA_3_1_8B_INSTRUCT = WeightSource(
    "meta-llama/Llama-3.1-8B-Instruct",
    LLAMA_DIRECTORY,
    revision=LLAMA_3_1_8B_INSTRUCT_REVISION,
    allow_patterns=(
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "model-*.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ),
    gated=True,
)
INDEX = "model_index.json"  # what makes a folder a diffusers pipeline
#: The PipelineCache's name for the Llama encoder I1 and E1 share.
SHARED_LLAMA = "llama-3.1-8b-instruct"


class _I1InputBase(TakesLoras):
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
    loras: Loras = []  # pydantic copies it for each input

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


def rendered_size(width: int, height: int, area_side: int, multiple: int = 16) -> tuple[int, int]:
    """The size HiDreamImagePipeline really renders: the aspect ratio scaled to area_side**2,
    each side rounded down to `multiple` (diffusers 0.42 pipeline_hidream_image.py, __call__)."""
    scale = math.sqrt(area_side**2 / (width * height))
    return int(width * scale // multiple * multiple), int(height * scale // multiple * multiple)


class HiDreamI1Runner:
    """Runs one I1 variant's text-to-image through diffusers' HiDreamImagePipeline."""

    def __init__(self, variant: Variant, pipelines: Callable[[], PipelineCache]) -> None:
        self.variant = variant
        self.pipelines = pipelines

    def __call__(self, params: _I1InputBase, ctx: RunContext) -> dict[str, Any]:
        (outcome,) = self.run_batch([(params, ctx)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def batch_key(self, params: _I1InputBase) -> Hashable | None:
        """Jobs that differ only in prompt, seed and output options can share one pipeline call (their
        LoRAs and scales too are the same)."""
        size = requested_size(params.image_size)
        steps, guidance = params.num_inference_steps, params.guidance_scale
        return (size, steps, guidance, params.num_images, params.negative_prompt, params.lora_key())

    def run_batch(self, jobs: list[tuple[_I1InputBase, RunContext]]) -> list[dict[str, Any] | Exception]:
        """One pipeline call for every job (prompts as a batch); each job keeps its own seeds, so its
        images are those it would get alone, up to float reduction order."""
        params = [job_params for job_params, _ in jobs]
        contexts = [ctx for _, ctx in jobs]
        first = params[0]
        loaded = self.pipelines().get(self.variant.name)
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
        reporters = [step_reporter(ctx, index * first.num_images) for index, ctx in enumerate(contexts)]

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            forming = latent_previews(pipeline.vae, tensors["latents"])
            stops = [report(step, first.num_inference_steps, forming) for report in reporters]
            if all(stops):
                pipeline._interrupt = True  # diffusers skips the remaining steps
            return tensors

        started = time.perf_counter()
        with loras_applied(self.pipelines(), pipe, first, contexts), step_noise_from(pipe.scheduler, generators):
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

    def __init__(self, variant: Variant, pipelines: Callable[[], PipelineCache]) -> None:
        self.variant = variant
        self.pipelines = pipelines

    def __call__(self, params: HiDreamI1ImageToImageInput, ctx: RunContext) -> dict[str, Any]:
        from hidream_service.inference.image_to_image import image_to_image

        loaded = self.pipelines().get(self.variant.name)
        source = ctx.load_image(params.image_url)
        want_w, want_h = requested_size(params.image_size) if params.image_size is not None else source.size
        width, height = rendered_size(want_w, want_h, loaded.area_side, 2 * loaded.vae_scale_factor)
        ctx.log(f"input image {source.width}x{source.height}, output {width}x{height}")
        seed = params.seed if params.seed is not None else seed_for(ctx.job_id)
        started = time.perf_counter()
        with loras_applied(self.pipelines(), loaded.pipeline, params, [ctx]):
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


class HiDreamI1Family(ModelFamily):
    """HiDream-I1 Full, Dev and Fast: one diffusers folder each, with the Llama encoder they share."""

    name = "hidream-i1"
    models = tuple(VARIANTS)

    def __init__(self) -> None:
        self.endpoints = (
            self.endpoint(
                "fal-ai/hidream-i1-full", "HiDream-I1 Full", HiDreamI1FullInput, Task.TEXT_TO_IMAGE, "full",
                replicate="hidream-ai/hidream-i1-full", wavespeed="wavespeed-ai/hidream-i1-full",
                openai="hidream-i1-full",
            ),
            self.endpoint(
                "fal-ai/hidream-i1-dev", "HiDream-I1 Dev", HiDreamI1DevInput, Task.TEXT_TO_IMAGE, "dev",
                replicate="hidream-ai/hidream-i1-dev", wavespeed="wavespeed-ai/hidream-i1-dev",
                openai="hidream-i1-dev",
            ),
            self.endpoint(
                "fal-ai/hidream-i1-fast", "HiDream-I1 Fast", HiDreamI1FastInput, Task.TEXT_TO_IMAGE, "fast",
                replicate="hidream-ai/hidream-i1-fast", wavespeed="wavespeed-ai/hidream-i1-fast",
                openai="hidream-i1-fast",
            ),
            # OpenAI's images.edit under the I1 name: image-to-image.
            self.endpoint(
                "fal-ai/hidream-i1-full/image-to-image", "HiDream-I1 Full image-to-image",
                HiDreamI1ImageToImageInput, Task.IMAGE_TO_IMAGE, "full", openai="hidream-i1-full",
            ),
        )  # fmt: skip

    # -- weights ---------------------------------------------------------------------------------

    def sources(self) -> Mapping[str, tuple[WeightSource, ...]]:
        return {f"hidream-i1-{key}": self.model_sources(key) for key in VARIANTS}

    def model_sources(self, model: str) -> tuple[WeightSource, ...]:
        return (SOURCES[model], LLAMA_3_1_8B_INSTRUCT)

    def available_models(self, layout: WeightsLayout) -> set[str]:
        return {key for key, variant in VARIANTS.items() if (layout.directory(variant.directory) / INDEX).is_file()}

    def check_weights(self, layout: WeightsLayout, model: str) -> None:
        check_i1_weights(layout, VARIANTS[model])

    def build_tiny(self, root: Path) -> None:
        from hidream_service.inference.tiny import build_tiny_i1

        build_tiny_i1(root, list(VARIANTS.values()))

    # -- running ---------------------------------------------------------------------------------

    def load(self, model: str, pipelines: PipelineCache) -> LoadedPipeline:
        from hidream_service.inference.pipelines import load_i1

        variant = VARIANTS[model]
        layout = pipelines.layout
        return load_i1(
            layout.directory(variant.directory),
            variant,
            pipelines.device,
            shared_llama(pipelines),
            sample_size_of(layout, variant.directory, REAL_SAMPLE_SIZE),
        )

    def runner(self, endpoint: Endpoint, pipelines: Callable[[], PipelineCache]) -> Runner:
        assert endpoint.model is not None
        variant = VARIANTS[endpoint.model]
        if endpoint.task is Task.IMAGE_TO_IMAGE:
            return HiDreamI1ImageToImageRunner(variant, pipelines)
        return HiDreamI1Runner(variant, pipelines)

    def image_shape_problem(
        self, endpoint: Endpoint, width: int, height: int, job_input: Mapping[str, Any]
    ) -> str | None:
        """Image-to-image with an explicit image_size covers and crops the source to that size, so there
        any shape will do."""
        problem = too_elongated(width, height, "the image")
        if problem is None:
            return None
        if endpoint.task is Task.IMAGE_TO_IMAGE:
            return None if job_input.get("image_size") is not None else f"{problem}; crop it first or give image_size"
        return f"{problem}; crop it first"


def shared_llama(pipelines: PipelineCache) -> tuple[Any, Any]:
    """The Llama encoder every I1 and E1 model loads with, loaded once per worker."""
    from hidream_service.inference.pipelines import load_llama

    directory = pipelines.layout.directory(LLAMA_DIRECTORY)
    return pipelines.shared(SHARED_LLAMA, lambda: load_llama(directory, pipelines.device))


def sample_size_of(layout: WeightsLayout, directory: str, real: int) -> int:
    """The latent side a model renders at: the real weights' own, or what tiny weights say."""
    return layout.service_metadata(directory).get("default_sample_size", real)


def check_i1_weights(layout: WeightsLayout, variant: Variant, *, also: tuple[WeightSource, ...] = ()) -> None:
    """An I1 variant's folder (and `also`, the folders of a model built on it) with the Llama encoder:
    each at its locked revision when the weights root has a lock file, each component with its weights."""
    from hidream_service.inference.manifest import verify_directory

    for source in (*also, SOURCES[variant.name], LLAMA_3_1_8B_INSTRUCT):
        verify_directory(source, layout.root)  # a downloaded folder must match its lock entry
    directory = layout.directory(variant.directory)
    if not (directory / "model_index.json").is_file():
        raise WeightsError(
            f"{directory / 'model_index.json'} not found: put the diffusers folder of {variant.repository} there"
        )
    problem = diffusers_folder_problem(directory, supplied=("text_encoder_4", "tokenizer_4"))
    if problem is not None:
        raise WeightsError(problem)
    llama = layout.directory(LLAMA_DIRECTORY)
    if not (llama / "config.json").is_file():
        raise WeightsError(
            misnamed_folder(layout.root, LLAMA_DIRECTORY, ("Meta-Llama-3.1-8B-Instruct",))  # HiDream's scripts' name
            or f"{llama}/config.json not found: HiDream-I1 needs meta-llama/Llama-3.1-8B-Instruct "
            "(transformers layout) in that directory"
        )
    problem = folder_weights_problem(llama)
    if problem is not None:
        raise WeightsError(problem)


HIDREAM_I1 = HiDreamI1Family()
