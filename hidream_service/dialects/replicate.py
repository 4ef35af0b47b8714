"""Replicate predictions: model names, Replicate-style inputs, prediction objects."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hidream_service.dialects.common import image_urls, iso, log_text
from hidream_service.jobs.model import Job, JobStatus
from hidream_service.models.base import StrictInput
from hidream_service.models.registry import ENDPOINTS

#: Replicate model name -> fal endpoint id.
MODELS = {
    "hidream-ai/hidream-i1-full": "fal-ai/hidream-i1-full",
    "hidream-ai/hidream-i1-dev": "fal-ai/hidream-i1-dev",
    "hidream-ai/hidream-i1-fast": "fal-ai/hidream-i1-fast",
    "hidream-ai/hidream-e1-full": "fal-ai/hidream-e1-full",
    "hidream-ai/hidream-e1-1": "fal-ai/hidream-e1-1",
    "hidream-ai/hidream-o1-image": "fal-ai/hidream-o1-image",
    "hidream-ai/hidream-o1-image-dev": "fal-ai/hidream-o1-image/dev",
    "hidream/noop": "hidream/noop",
}
ENDPOINT_TO_MODEL = {endpoint: model for model, endpoint in MODELS.items()}
EVENTS = ("start", "output", "logs", "completed")


class ReplicateImageInput(StrictInput):
    """Inputs in Replicate's usual names; mapped onto the endpoint's fal schema."""

    prompt: str = Field(min_length=1, max_length=10_000)
    negative_prompt: str | None = Field(default=None, max_length=10_000)
    width: int = Field(default=1024, ge=16, le=4096)
    height: int = Field(default=1024, ge=16, le=4096)
    num_outputs: int = Field(default=1, ge=1, le=4)
    num_inference_steps: int | None = Field(default=None, ge=1, le=50)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=20.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    output_format: Literal["webp", "jpg", "png"] = "webp"
    disable_safety_checker: bool = False

    def to_fal(self) -> dict[str, Any]:
        fal: dict[str, Any] = {
            "prompt": self.prompt,
            "image_size": {"width": self.width, "height": self.height},
            "num_images": self.num_outputs,
            "output_format": "jpeg" if self.output_format == "jpg" else self.output_format,
            "enable_safety_checker": not self.disable_safety_checker,
        }
        for name in ("negative_prompt", "num_inference_steps", "guidance_scale", "seed"):
            value = getattr(self, name)
            if value is not None:
                fal[name] = value
        return fal


class ReplicateNoopInput(StrictInput):
    prompt: str = Field(default="", max_length=10_000)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    num_steps: int = Field(default=0, ge=0, le=1000)
    step_seconds: float = Field(default=0.0, ge=0.0, le=10.0)
    fail_with: str | None = Field(default=None, max_length=1000)
    output_format: Literal["webp", "jpg", "png"] = "png"

    def to_fal(self) -> dict[str, Any]:
        fal = self.model_dump(exclude_none=True)
        fal["output_format"] = "jpeg" if self.output_format == "jpg" else self.output_format
        return fal


class ReplicateEditInput(StrictInput):
    """E1 editing in Replicate's names: `image` is a URL (the client uploads local files first)."""

    image: str = Field(min_length=1, description="The image to edit: a URL or a data URI.")
    prompt: str = Field(min_length=1, max_length=10_000, description="The edit instruction.")
    target_image_description: str | None = Field(default=None, max_length=10_000)
    negative_prompt: str | None = Field(default=None, max_length=10_000)
    num_outputs: int = Field(default=1, ge=1, le=4)
    num_inference_steps: int | None = Field(default=None, ge=1, le=50)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=20.0)
    image_guidance_scale: float | None = Field(default=None, ge=0.0, le=20.0)
    refine_strength: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    output_format: Literal["webp", "jpg", "png"] = "webp"
    disable_safety_checker: bool = False

    def to_fal(self) -> dict[str, Any]:
        fal: dict[str, Any] = {
            "image_url": self.image,
            "edit_instruction": self.prompt,
            "num_images": self.num_outputs,
            "output_format": "jpeg" if self.output_format == "jpg" else self.output_format,
            "enable_safety_checker": not self.disable_safety_checker,
        }
        optional = ("target_image_description", "negative_prompt", "num_inference_steps", "guidance_scale")
        for name in (*optional, "image_guidance_scale", "refine_strength", "seed"):
            value = getattr(self, name)
            if value is not None:
                fal[name] = value
        return fal


ReplicateInput = type[ReplicateImageInput] | type[ReplicateNoopInput] | type[ReplicateEditInput]


def input_model(model: str) -> ReplicateInput:
    family = ENDPOINTS[MODELS[model]].family
    if family == "noop":
        return ReplicateNoopInput
    return ReplicateEditInput if family == "hidream-e1" else ReplicateImageInput


STATUS = {
    JobStatus.IN_QUEUE: "starting",
    JobStatus.IN_PROGRESS: "processing",
    JobStatus.CANCELLED: "canceled",
}


def status_of(job: Job) -> str:
    if job.status is JobStatus.COMPLETED:
        return "succeeded" if job.succeeded else "failed"
    return STATUS[job.status]


def render_prediction(job: Job) -> dict[str, Any]:
    """A prediction object as the replicate client parses it (id, model, version, status, urls...)."""
    model = ENDPOINT_TO_MODEL.get(job.endpoint, job.endpoint)
    base = f"{job.base_url}/v1/predictions/{job.id}"
    urls = image_urls(job)
    return {
        "id": job.id,
        "model": model,
        "version": model,  # official-model style: the model name stands in for a version id
        "status": status_of(job),
        "input": job.client_input if job.client_input is not None else job.input,
        "output": urls if job.succeeded and urls else None,
        "logs": log_text(job),
        "error": None if job.succeeded else job.error,
        "metrics": {"predict_time": job.inference_time} if job.inference_time is not None else {},
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "urls": {"get": base, "cancel": f"{base}/cancel"},
        "data_removed": False,
    }
