"""The HiDream runners on tiny weights, in this process, as the worker gets them from each endpoint's
family: loading, progress and cancel, E1's weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from hidream_service.inference.hidream_e1 import load_sharded_state
from hidream_service.inference.pipelines import PipelineCache
from hidream_service.inference.recipes import VARIANTS
from hidream_service.inference.weights import WeightsLayout
from hidream_service.models.base import ImageFile, JobCancelled
from hidream_service.models.registry import DEFAULT_REGISTRY


@dataclass
class RecordingContext:
    job_id: str = "job"
    cancel_after_step: int | None = None
    lines: list[str] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)  # progress events: (step, total)
    saved: list[Any] = field(default_factory=list)
    previews: list[tuple[int, Any]] = field(default_factory=list)  # (step, forming image) at every step
    inputs: dict[str, Any] = field(default_factory=dict)  # url -> PIL image

    def log(self, message: str, level: str = "INFO") -> None:
        self.lines.append(message)

    def progress(self, step: int, total: int) -> None:
        self.steps.append((step, total))

    def preview(self, step: int, total: int, forming: Callable[[], Any]) -> None:
        self.previews.append((step, forming()))

    def cancelled(self) -> bool:
        return self.cancel_after_step is not None and len(self.steps) >= self.cancel_after_step

    def load_image(self, url: str) -> Any:
        return self.inputs[url]

    def screen(self, images: list[Any]) -> tuple[list[Any], list[bool]]:
        return images, [False] * len(images)

    def save_image(self, index: int, image: Any, output_format: str, *, sync_mode: bool) -> ImageFile:
        self.saved.append(image)
        width, height = image.size
        return ImageFile(
            url=f"mem://{index}", content_type="image/png", file_name=f"{index}.png", file_size=0,
            width=width, height=height,
        )  # fmt: skip


@pytest.fixture(scope="module")
def pipelines(tiny_weights: Path) -> PipelineCache:
    return DEFAULT_REGISTRY.pipelines(WeightsLayout(tiny_weights), "cpu", max_loaded=5)


def run_endpoint(pipelines: PipelineCache, endpoint_id: str, inputs: dict[str, Any], ctx: RecordingContext) -> Any:
    """What a worker does with a job: parse its input once, run it with its family's runner."""
    endpoint = DEFAULT_REGISTRY.endpoints[endpoint_id]
    return endpoint.family.runner(endpoint, lambda: pipelines)(endpoint.parse(inputs), ctx)


def test_cancel_interrupts_at_the_next_step(pipelines: PipelineCache) -> None:
    ctx = RecordingContext(cancel_after_step=2)

    with pytest.raises(JobCancelled):
        run_endpoint(pipelines, "fal-ai/hidream-i1-full", {"prompt": "x", "num_inference_steps": 20, "seed": 1}, ctx)

    assert ctx.steps == [(1, 20), (2, 20)]
    assert ctx.saved == []


def test_every_variant_loads_with_its_scheduler_and_runs(pipelines: PipelineCache) -> None:
    expected = {"full": "UniPCMultistepScheduler", "dev": "FlowMatchLCMScheduler", "fast": "FlowMatchLCMScheduler"}
    for name, variant in VARIANTS.items():
        ctx = RecordingContext()
        inputs = {"prompt": "a boat", "num_inference_steps": 2, "seed": 5}
        output = run_endpoint(pipelines, f"fal-ai/hidream-i1-{name}", inputs, ctx)

        scheduler = pipelines.get(name).pipeline.scheduler
        assert type(scheduler).__name__ == expected[name]
        shift = scheduler.config.get("flow_shift") or scheduler.config.get("shift")
        assert shift == variant.shift
        assert output["seed"] == 5 and len(ctx.saved) == 1 and ctx.steps == [(1, 2), (2, 2)]


def source_picture() -> Image.Image:
    return Image.effect_noise((96, 64), 60).convert("RGB")


@pytest.mark.parametrize("endpoint", ["fal-ai/hidream-e1-full", "fal-ai/hidream-e1-1"])
def test_e1_cancel_interrupts_at_the_next_step(pipelines: PipelineCache, endpoint: str) -> None:
    ctx = RecordingContext(cancel_after_step=2, inputs={"mem://in": source_picture()})

    with pytest.raises(JobCancelled):
        inputs = {"image_url": "mem://in", "edit_instruction": "x", "num_inference_steps": 10, "seed": 1}
        run_endpoint(pipelines, endpoint, inputs, ctx)

    assert ctx.steps == [(1, 10), (2, 10)]
    assert ctx.saved == []


def test_e1_1_loads_its_own_transformer_over_the_i1_full_config(pipelines: PipelineCache, tiny_weights: Path) -> None:
    shards = tiny_weights / "HiDream-E1-1" / "transformer"
    stored = load_sharded_state(shards)
    loaded = pipelines.get("e1-1").pipeline.transformer.state_dict()

    assert len(list(shards.glob("*.safetensors"))) > 1  # sharded, like the published folder
    assert set(stored) == set(loaded)
    assert all(torch.equal(stored[name], loaded[name]) for name in stored)
