"""hidream/noop: the whole job lifecycle with no model, returning a 1x1 PNG.

For smoke-testing an integration's webhooks without a GPU and for measuring the service's own
overhead. It can also pretend to work in steps (to watch progress and cancel) or fail on purpose
(to see a failure webhook).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import Field, model_validator

from hidream_service.models.base import InputError, JobCancelled, RunContext, Runner, StrictInput
from hidream_service.models.family import Endpoint, ModelFamily, Task

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import PipelineCache

NOOP_ID = "hidream/noop"
#: The longest a noop job may pretend to work (num_steps x step_seconds): enough to watch progress
#: and cancel, too short to hold a worker from real jobs.
MAX_PRETEND_SECONDS = 60.0


class NoopInput(StrictInput):
    prompt: str = Field(default="", max_length=10_000)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    num_steps: int = Field(default=0, ge=0, le=1000, description="Pretend denoising steps, reported as progress.")
    step_seconds: float = Field(default=0.0, ge=0.0, le=10.0, description="Sleep per pretend step.")
    fail_with: str | None = Field(
        default=None, max_length=1000, description="End the job with this error, to test failure handling."
    )
    output_format: str = Field(default="png", pattern="^(jpeg|png|webp)$")
    sync_mode: bool = False

    @model_validator(mode="after")
    def _bounded_pretence(self) -> NoopInput:
        if self.num_steps * self.step_seconds > MAX_PRETEND_SECONDS:
            raise ValueError(
                f"num_steps x step_seconds is {self.num_steps * self.step_seconds:g} s;"
                f" a noop job pretends to work for at most {MAX_PRETEND_SECONDS:g} s"
            )
        return self


def run_noop(params: NoopInput, ctx: RunContext) -> dict[str, Any]:
    started = time.perf_counter()
    for step in range(params.num_steps):
        if ctx.cancelled():
            raise JobCancelled()
        time.sleep(params.step_seconds)
        ctx.progress(step + 1, params.num_steps)
    if ctx.cancelled():
        raise JobCancelled()
    if params.fail_with is not None:
        raise InputError(params.fail_with)
    image = Image.new("RGB", (1, 1), (params.seed % 256, 0, 0))
    file = ctx.save_image(0, image, params.output_format, sync_mode=params.sync_mode)
    return {
        "images": [file.model_dump()],
        "seed": params.seed,
        "has_nsfw_concepts": [False],
        "prompt": params.prompt,
        "timings": {"inference": time.perf_counter() - started},
    }


class NoopFamily(ModelFamily):
    """No model and no weights: served everywhere, run on a CPU."""

    name = "noop"

    def __init__(self) -> None:
        self.endpoints = (
            self.endpoint(
                NOOP_ID, "No model: the job lifecycle only", NoopInput, Task.LIFECYCLE, replicate="hidream/noop"
            ),
        )

    def runner(self, endpoint: Endpoint, pipelines: Callable[[], PipelineCache]) -> Runner:
        return run_noop


NOOP = NoopFamily()
