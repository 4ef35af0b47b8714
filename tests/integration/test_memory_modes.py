"""HIDREAM_MEMORY_MODE on tiny weights, on the CPU: each mode's own code path runs (the CPU is both
where components compute and where they are parked), the components move as the mode says, and
every mode renders the same bytes."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from diffusers.hooks.group_offloading import _get_group_onload_device
from PIL import Image

from hidream_service.inference.memory_modes import TEXT_ENCODERS, MemoryMode
from hidream_service.inference.pipelines import PipelineCache
from hidream_service.inference.weights import WeightsLayout
from hidream_service.models.registry import DEFAULT_REGISTRY
from tests.integration.test_runners import RecordingContext, run_endpoint

#: A text-to-image job through diffusers' own call (with CFG), and an E1-Full edit through ours
#: (the VAE encoding the source, three-way guidance, the refine stage switching weights).
JOBS: dict[str, dict[str, Any]] = {
    "fal-ai/hidream-i1-full": {"prompt": "a boat", "num_inference_steps": 2, "seed": 5},
    "fal-ai/hidream-e1-full": {
        "image_url": "mem://source",
        "edit_instruction": "make it red",
        "target_image_description": "a red boat",
        "num_inference_steps": 2,
        "refine_strength": 0.5,
        "seed": 5,
    },
}
#: What comes to the execution device for its turn, in each mode.
VISITORS = {
    MemoryMode.GPU: set(),
    MemoryMode.ENCODERS_OFFLOADED: set(TEXT_ENCODERS),
    MemoryMode.MODEL_OFFLOAD: {*TEXT_ENCODERS, "transformer"},
    MemoryMode.BLOCK_OFFLOAD: set(TEXT_ENCODERS),  # the transformer is streamed block by block instead
}


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def source_picture() -> Image.Image:
    """The same picture every time (PIL's effect_noise is not)."""
    pixels = random.Random(0).randbytes(96 * 64 * 3)
    return Image.frombytes("RGB", (96, 64), pixels)


def run_jobs(cache: PipelineCache) -> list[bytes]:
    outputs = []
    for endpoint_id, inputs in JOBS.items():
        ctx = RecordingContext(inputs={"mem://source": source_picture()})
        run_endpoint(cache, endpoint_id, inputs, ctx)
        assert ctx.previews  # the previews decode with the VAE mid-loop: they must work in every mode too
        outputs += [png_bytes(image) for image in ctx.saved]
    return outputs


@pytest.fixture(scope="module")
def rendered(tiny_weights: Path) -> dict[MemoryMode, tuple[list[bytes], PipelineCache]]:
    results = {}
    for mode in MemoryMode:
        cache = DEFAULT_REGISTRY.pipelines(WeightsLayout(tiny_weights), "cpu", max_loaded=2, memory_mode=mode)
        results[mode] = (run_jobs(cache), cache)
    return results


def test_every_mode_renders_the_same_bytes(rendered: dict[MemoryMode, tuple[list[bytes], PipelineCache]]) -> None:
    everything_on_the_device, _ = rendered[MemoryMode.GPU]

    assert len(everything_on_the_device) == len(JOBS)
    for mode, (outputs, _) in rendered.items():
        assert outputs == everything_on_the_device, mode


@pytest.mark.parametrize("mode", list(MemoryMode))
def test_components_visit_one_at_a_time_as_the_mode_says(
    rendered: dict[MemoryMode, tuple[list[bytes], PipelineCache]], mode: MemoryMode
) -> None:
    _, cache = rendered[mode]
    moves = list(cache.placement.parking.moves)

    assert {name for direction, name in moves if direction == "in"} == VISITORS[mode]
    visiting = None
    for direction, name in moves:  # never two parked components on the device at once
        if direction == "in":
            assert visiting is None, moves
            visiting = name
        else:
            assert visiting == name, moves
            visiting = None
    assert visiting is None  # the VAE sent the last one back before decoding


def test_block_offload_streams_the_transformer(
    rendered: dict[MemoryMode, tuple[list[bytes], PipelineCache]],
) -> None:
    _, cache = rendered[MemoryMode.BLOCK_OFFLOAD]

    for model in ("full", "e1-full"):
        transformer = cache.get(model).pipeline.transformer
        assert _get_group_onload_device(transformer).type == "cpu"
