"""The HiDream-I1 runner on tiny weights, in this process: cancel stops the denoising loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hidream_service.inference.pipelines import PipelineCache
from hidream_service.inference.weights import WeightsLayout
from hidream_service.models.base import ImageFile, JobCancelled
from hidream_service.models.hidream_i1 import VARIANTS, HiDreamI1Runner


@dataclass
class RecordingContext:
    job_id: str = "job"
    cancel_after_step: int | None = None
    lines: list[str] = field(default_factory=list)
    saved: list[Any] = field(default_factory=list)

    def log(self, message: str, level: str = "INFO") -> None:
        self.lines.append(message)

    def cancelled(self) -> bool:
        steps = sum(line.startswith("step ") for line in self.lines)
        return self.cancel_after_step is not None and steps >= self.cancel_after_step

    def save_image(self, index: int, image: Any, output_format: str, *, sync_mode: bool) -> ImageFile:
        self.saved.append(image)
        width, height = image.size
        return ImageFile(
            url=f"mem://{index}", content_type="image/png", file_name=f"{index}.png", file_size=0,
            width=width, height=height,
        )  # fmt: skip


@pytest.fixture(scope="module")
def pipelines(tiny_weights: Path) -> PipelineCache:
    return PipelineCache(WeightsLayout(tiny_weights), "cpu", max_loaded=3)


def test_cancel_interrupts_at_the_next_step(pipelines: PipelineCache) -> None:
    ctx = RecordingContext(cancel_after_step=2)

    with pytest.raises(JobCancelled):
        HiDreamI1Runner(VARIANTS["full"], pipelines)({"prompt": "x", "num_inference_steps": 20, "seed": 1}, ctx)

    assert [line for line in ctx.lines if line.startswith("step ")] == ["step 1/20", "step 2/20"]
    assert ctx.saved == []


def test_every_variant_loads_with_its_scheduler_and_runs(pipelines: PipelineCache) -> None:
    expected = {"full": "UniPCMultistepScheduler", "dev": "FlowMatchLCMScheduler", "fast": "FlowMatchLCMScheduler"}
    for name, variant in VARIANTS.items():
        ctx = RecordingContext()
        output = HiDreamI1Runner(variant, pipelines)({"prompt": "a boat", "num_inference_steps": 2, "seed": 5}, ctx)

        scheduler = pipelines.get(variant).pipeline.scheduler
        assert type(scheduler).__name__ == expected[name]
        shift = scheduler.config.get("flow_shift") or scheduler.config.get("shift")
        assert shift == variant.shift
        assert output["seed"] == 5 and len(ctx.saved) == 1
