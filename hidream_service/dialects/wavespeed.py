"""WaveSpeed v3: model ids, inputs (size "W*H", seed -1), the {code, message, data} envelope."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from hidream_service.dialects.common import image_urls, iso, nsfw_flags
from hidream_service.jobs.model import Job, JobStatus
from hidream_service.models.base import StrictInput
from hidream_service.models.registry import ENDPOINTS

MODELS = {
    "wavespeed-ai/hidream-i1-full": "fal-ai/hidream-i1-full",
    "wavespeed-ai/hidream-i1-dev": "fal-ai/hidream-i1-dev",
    "wavespeed-ai/hidream-i1-fast": "fal-ai/hidream-i1-fast",
    "wavespeed-ai/hidream-e1-full": "fal-ai/hidream-e1-full",
    "wavespeed-ai/hidream-o1-image-text-to-image": "fal-ai/hidream-o1-image",
    "wavespeed-ai/hidream-o1-image-dev-text-to-image": "fal-ai/hidream-o1-image/dev",
}
ENDPOINT_TO_MODEL = {endpoint: model for model, endpoint in MODELS.items()}
SIZE = re.compile(r"^(\d{2,4})\*(\d{2,4})$")


class _WaveSpeedOptions(StrictInput):
    """Seed and output options every WaveSpeed model takes."""

    seed: int = Field(default=-1, ge=-1, le=2**63 - 1, description="-1 picks one at random")
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"
    enable_base64_output: bool = False
    enable_safety_checker: bool = True
    enable_sync_mode: bool = False

    def _fal_options(self) -> dict[str, Any]:
        fal: dict[str, Any] = {
            "output_format": self.output_format,
            "enable_safety_checker": self.enable_safety_checker,
            "sync_mode": self.enable_base64_output,
        }
        if self.seed != -1:
            fal["seed"] = self.seed
        return fal


class _WaveSpeedTextToImage(_WaveSpeedOptions):
    """What every WaveSpeed text-to-image model takes; subclasses set the size range."""

    SIDES: ClassVar[tuple[int, int]] = (256, 1536)

    prompt: str = Field(min_length=1, max_length=10_000)
    size: str = Field(default="1024*1024", description='"width*height", each 256 to 1536')

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        match = SIZE.match(value)
        if match is None:
            raise ValueError('size must look like "1024*1024"')
        low, high = cls.SIDES
        for side in (int(match.group(1)), int(match.group(2))):
            if not low <= side <= high:
                raise ValueError(f"each side of size must be {low} to {high}")
        return value

    def to_fal(self) -> dict[str, Any]:
        width, height = (int(side) for side in self.size.split("*"))
        return {"prompt": self.prompt, "image_size": {"width": width, "height": height}, **self._fal_options()}


class WaveSpeedImageInput(_WaveSpeedTextToImage):
    """wavespeed-ai/hidream-i1-*."""

    negative_prompt: str | None = Field(default=None, max_length=10_000)
    num_inference_steps: int | None = Field(default=None, ge=1, le=50)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=20.0)
    num_images: int = Field(default=1, ge=1, le=4)

    def to_fal(self) -> dict[str, Any]:
        fal = {**super().to_fal(), "num_images": self.num_images}
        for name in ("negative_prompt", "num_inference_steps", "guidance_scale"):
            value = getattr(self, name)
            if value is not None:
                fal[name] = value
        return fal


class WaveSpeedO1ImageInput(_WaveSpeedTextToImage):
    """wavespeed-ai/hidream-o1-image(-dev)-text-to-image: 2K by default; the size snaps to O1's presets."""

    SIDES: ClassVar[tuple[int, int]] = (256, 4096)

    size: str = Field(default="2048*2048", description='"width*height", each 256 to 4096; snapped to a preset')


class WaveSpeedEditInput(_WaveSpeedOptions):
    """wavespeed-ai/hidream-e1-full: `image` (a URL) and `prompt` (the instruction)."""

    image: str = Field(min_length=1, description="The image to edit: a URL or a data URI.")
    prompt: str = Field(min_length=1, max_length=10_000, description="What to change.")

    def to_fal(self) -> dict[str, Any]:
        return {"image_url": self.image, "edit_instruction": self.prompt, **self._fal_options()}


class UploadTicketRequest(StrictInput):
    """What `wavespeed.upload()` posts to /api/v3/media/uploads before it PUTs the file."""

    filename: str = Field(min_length=1, max_length=1000)
    size: int = Field(ge=0)
    content_type: str | None = Field(default=None, max_length=200)


WaveSpeedInput = type[WaveSpeedImageInput] | type[WaveSpeedO1ImageInput] | type[WaveSpeedEditInput]


def input_model(model: str) -> WaveSpeedInput:
    family = ENDPOINTS[MODELS[model]].family
    if family == "hidream-e1":
        return WaveSpeedEditInput
    return WaveSpeedO1ImageInput if family == "hidream-o1" else WaveSpeedImageInput


def status_of(job: Job) -> str:
    if job.status is JobStatus.IN_QUEUE:
        return "created"
    if job.status is JobStatus.IN_PROGRESS:
        return "processing"
    if job.status is JobStatus.CANCELLED:
        return "cancelled"
    return "completed" if job.succeeded else "failed"


def render_data(job: Job) -> dict[str, Any]:
    """The `data` object of WaveSpeed's envelope; webhooks carry it bare."""
    inference_ms = None if job.inference_time is None else round(job.inference_time * 1000)
    return {
        "id": job.id,
        "model": ENDPOINT_TO_MODEL.get(job.endpoint, job.endpoint),
        "input": job.client_input if job.client_input is not None else job.input,
        "outputs": image_urls(job) if job.succeeded else [],
        "urls": {"get": f"{job.base_url}/api/v3/predictions/{job.id}/result"},
        "has_nsfw_contents": nsfw_flags(job),
        "status": status_of(job),
        "created_at": iso(job.created_at),
        "error": "" if job.succeeded or job.error is None else job.error,
        "executionTime": inference_ms or 0,
        "timings": {"inference": inference_ms or 0},
    }


def envelope(data: Any, code: int = 200, message: str = "success") -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}
