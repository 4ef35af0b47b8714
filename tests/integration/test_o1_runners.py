"""The HiDream-O1 runner on the tiny checkpoint, in this process: sizes, references, seeds, cancel.

Tiny O1 renders the release's presets divided by 32 (the 2K square is 64x64, 16:9 is 80x44).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hidream_service.inference.pipelines import PipelineCache
from hidream_service.inference.weights import WeightsLayout
from hidream_service.models.base import InputError, JobCancelled
from hidream_service.models.registry import DEFAULT_REGISTRY
from tests.integration.test_runners import RecordingContext, run_endpoint

O1 = "fal-ai/hidream-o1-image"
O1_DEV = "fal-ai/hidream-o1-image/dev"


@pytest.fixture(scope="module")
def pipelines(tiny_weights: Path) -> PipelineCache:
    return DEFAULT_REGISTRY.pipelines(WeightsLayout(tiny_weights), "cpu", max_loaded=2)


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def run(
    pipelines: PipelineCache, inputs: dict[str, Any], *, model: str = O1, references: Sequence[Image.Image] = ()
) -> tuple[dict[str, Any], RecordingContext]:
    """`model` is the text-to-image endpoint; with references, its edit endpoint runs."""
    urls = {f"mem://{index}": image for index, image in enumerate(references)}
    ctx = RecordingContext(inputs=urls)
    if references:
        inputs = {**inputs, "reference_image_urls": list(urls)}
        model = f"{model}/edit"
    output = run_endpoint(pipelines, model, inputs, ctx)
    return output, ctx


def logged(ctx: RecordingContext, text: str) -> bool:
    return any(text in line for line in ctx.lines)


def sizes(output: dict[str, Any]) -> list[tuple[int, int]]:
    return [(image["width"], image["height"]) for image in output["images"]]


def test_text_to_image_renders_the_2k_square_by_default(pipelines: PipelineCache) -> None:
    output, ctx = run(pipelines, {"prompt": "a red fox", "num_inference_steps": 3, "seed": 7})

    assert sizes(output) == [(64, 64)]
    assert output["seed"] == 7 and output["prompt"] == "a red fox"
    assert output["has_nsfw_concepts"] == [False] and output["timings"]["inference"] > 0
    assert ctx.steps == [(1, 3), (2, 3), (3, 3)]
    assert ctx.saved[0].size == (64, 64)


def test_a_requested_size_snaps_to_the_preset_with_its_aspect_ratio(pipelines: PipelineCache) -> None:
    output, ctx = run(pipelines, {"prompt": "a beach", "image_size": "landscape_16_9", "num_inference_steps": 2})

    assert sizes(output) == [(80, 44)]
    assert logged(ctx, "requested 1024x576; O1 renders the closest preset, 80x44")


def test_one_reference_is_edited_at_the_output_size(pipelines: PipelineCache) -> None:
    output, ctx = run(
        pipelines,
        {"prompt": "make the sky purple", "num_inference_steps": 2, "seed": 1},
        references=[picture(96, 64)],
    )

    assert sizes(output) == [(64, 64)]  # the default square: the edit does not keep the aspect unless asked
    assert logged(ctx, "64x64; 1 reference(s) at 78x52")  # 3:2 at the 64x64 area, in whole patches


def test_two_references_personalize_at_a_smaller_scale_each(pipelines: PipelineCache) -> None:
    output, ctx = run(
        pipelines,
        {"prompt": "the cat from image 1 on the sofa from image 2", "num_inference_steps": 2, "num_images": 2},
        references=[picture(64, 64, seed=1), picture(60, 90, seed=2)],
    )

    assert sizes(output) == [(64, 64), (64, 64)]
    assert logged(ctx, "64x64; 2 reference(s) at 48x48, 38x58")  # 48 = 64 * 48 // 64 for two


def test_keep_original_aspect_renders_at_the_single_reference_aspect(pipelines: PipelineCache) -> None:
    output, ctx = run(
        pipelines,
        {"prompt": "as a watercolour", "num_inference_steps": 2, "keep_original_aspect": True, "image_size": "square"},
        references=[picture(120, 60)],
    )

    assert sizes(output) == [(90, 44)]
    assert logged(ctx, "output 90x44, the reference's aspect ratio (keep_original_aspect)")


def test_the_same_seed_gives_the_same_pixels_and_image_i_depends_only_on_seed_plus_i(
    pipelines: PipelineCache,
) -> None:
    inputs = {"prompt": "a lighthouse", "num_inference_steps": 3, "seed": 11, "num_images": 2}

    first, first_ctx = run(pipelines, inputs)
    second, second_ctx = run(pipelines, inputs)
    alone, alone_ctx = run(pipelines, {**inputs, "num_images": 1})
    shifted, shifted_ctx = run(pipelines, {**inputs, "seed": 12, "num_images": 1})

    def pixels(ctx: RecordingContext, index: int) -> np.ndarray:
        return np.asarray(ctx.saved[index], dtype=np.float64)

    assert [image.tobytes() for image in first_ctx.saved] == [image.tobytes() for image in second_ctx.saved]
    assert first_ctx.saved[0].tobytes() != first_ctx.saved[1].tobytes()
    # The same up to float reduction order, which CPU kernels may change with the batch size.
    assert np.abs(pixels(alone_ctx, 0) - pixels(first_ctx, 0)).mean() < 1.0
    assert np.abs(pixels(shifted_ctx, 0) - pixels(first_ctx, 1)).mean() < 1.0  # image 1 of seed 11 is seed 12


@pytest.mark.parametrize("references", [0, 1, 2], ids=["text-to-image", "edit", "personalization"])
def test_dev_runs_its_distilled_schedule_without_guidance(pipelines: PipelineCache, references: int) -> None:
    images = [picture(64, 64, seed=index) for index in range(references)]

    output, ctx = run(pipelines, {"prompt": "x", "num_inference_steps": 3, "seed": 2}, model=O1_DEV, references=images)
    _, again = run(pipelines, {"prompt": "x", "num_inference_steps": 3, "seed": 2}, model=O1_DEV, references=images)

    assert sizes(output) == [(64, 64)]
    assert ctx.steps[-1] == (3, 3)
    assert ctx.saved[0].tobytes() == again.saved[0].tobytes()  # the flash sampler's noise is seeded too


def test_cancel_stops_at_the_next_step(pipelines: PipelineCache) -> None:
    ctx = RecordingContext(cancel_after_step=2)

    with pytest.raises(JobCancelled):
        run_endpoint(pipelines, O1, {"prompt": "x", "num_inference_steps": 20}, ctx)

    assert ctx.steps == [(1, 20), (2, 20)]
    assert ctx.saved == []


def test_a_prompt_with_the_model_s_own_tokens_is_an_input_error(pipelines: PipelineCache) -> None:
    with pytest.raises(InputError, match="special tokens"):
        run(pipelines, {"prompt": "a cat <|tms_token|>", "num_inference_steps": 1})


def test_an_elongated_reference_is_an_input_error(pipelines: PipelineCache) -> None:
    with pytest.raises(InputError, match="more elongated than 4:1"):
        run(pipelines, {"prompt": "x", "num_inference_steps": 1}, references=[picture(200, 20)])
