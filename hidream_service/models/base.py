"""What every endpoint runner sees of the job it runs, and the errors it may raise."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class InputError(Exception):
    """The input passed the schema but cannot be run (reported as HTTP 422, never 500)."""


class JobCancelled(Exception):
    """The runner stopped early because the job was cancelled."""


class StrictInput(BaseModel):
    """Base of every endpoint input: unknown fields are an error, not silently ignored, and so are
    NaN and infinities (a form field or a Python caller can send them; JSON cannot)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ImageFile(BaseModel):
    """fal's File/Image shape."""

    url: str
    content_type: str
    file_name: str
    file_size: int
    width: int
    height: int


class ImageOutput(BaseModel):
    """fal's output of an image endpoint."""

    images: list[ImageFile]
    seed: int
    has_nsfw_concepts: list[bool]
    prompt: str
    timings: dict[str, float] = Field(default_factory=dict)


class RunContext(Protocol):
    """The job as a runner sees it. Implemented by the worker; no I/O happens on the step path."""

    job_id: str

    def log(self, message: str, level: str = "INFO") -> None:
        """Queue a log line for the job (flushed to the store off the inference path)."""

    def progress(self, step: int, total: int) -> None:
        """Report that `step` of `total` is done (a typed event; fal's clients see it as `step i/n`)."""

    def preview(self, step: int, total: int, forming: Callable[[], Any]) -> None:
        """Offer a preview after `step`: `forming()` answers the forming image [3, h, w] in [-1, 1],
        and is called only when a preview is due (cheap device work; encoding happens off the loop)."""

    def cancelled(self) -> bool:
        """True once a cancel was requested; runners stop at the next step."""

    def save_image(self, index: int, image: Any, output_format: str, *, sync_mode: bool) -> ImageFile:
        """Encode and store one output image (or make it a data URI in sync mode)."""

    def load_image(self, url: str) -> Any:
        """An image input as an RGB PIL image. The API already fetched, checked and stored it."""

    def screen(self, images: list[Any]) -> tuple[list[Any], list[bool]]:
        """Run the safety checker: flagged images come back black, with their flags."""


class Runner(Protocol):
    def __call__(self, params: Any, ctx: RunContext) -> dict[str, Any]:
        """Run one job's input, already parsed into its endpoint's input model; return the endpoint's
        output JSON."""


@runtime_checkable
class BatchRunner(Runner, Protocol):
    """A runner that can also run compatible jobs as one model call."""

    def batch_key(self, params: Any) -> Hashable | None:
        """Jobs with equal keys can share a call; None: this job runs alone."""

    def run_batch(self, jobs: list[tuple[Any, RunContext]]) -> list[dict[str, Any] | Exception]:
        """Each job's output, or the exception that job ended with (JobCancelled, InputError, ...)."""
