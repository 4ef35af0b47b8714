"""WaveSpeed's v3 API, as the official `wavespeed` client uses it.

    POST /api/v3/{owner}/{model}[?webhook=URL]     submit -> HTTP 200 {code, message, data}
    GET  /api/v3/predictions/{id}/result           the task (the SDK polls this)
    GET  /api/v3/predictions/{id}                  the same, as the REST docs name it
    GET  /api/v3/webhook/secret                    the calling key's signing secret, as WaveSpeed serves it
    POST /api/v3/media/uploads                     {filename, size} -> a PUT instruction and download_url

Inputs: `size` "W*H", seed -1 for a random one, `enable_base64_output`, `enable_sync_mode`; mapped
onto the endpoint's fal schema by its task. Webhooks carry the bare `data` object, signed WaveSpeed's
way (`webhook-signature: v3,<hex>`). Errors are {code, message, data: null}, with 400 for bad input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from hidream_service.api.rendering import iso
from hidream_service.dialects.base import Dialect, error_message
from hidream_service.dialects.common import compact_json, image_urls, nsfw_flags, owner_of_delivery, signing_context
from hidream_service.jobs.model import Job, JobStatus
from hidream_service.models.base import StrictInput
from hidream_service.models.family import Endpoint, Task
from hidream_service.models.loras import MAX_LORAS, LoraWeight
from hidream_service.signing_keys import SigningKeys
from webhooks.outbox import Delivery, OutboxMessage
from webhooks.signing import wavespeed_sign_headers

if TYPE_CHECKING:
    from fastapi import APIRouter

SIGNER = "wavespeed"  # WaveSpeed's v3 HMAC headers
SIZE = re.compile(r"^(\d{2,4})\*(\d{2,4})$")
SIDES = (256, 4096)


class WaveSpeedDialect(Dialect):
    id = "wavespeed"
    signer = SIGNER

    def router(self, endpoints: Mapping[str, Endpoint]) -> APIRouter:
        from hidream_service.dialects.wavespeed.routes import router

        return router

    def render_error(self, status: int, detail: Any) -> tuple[int, dict[str, Any]]:
        status = 400 if status == 422 else status  # WaveSpeed answers a bad input with 400
        return status, {"code": status, "message": error_message(detail), "data": None}

    def ending(self, job: Job, endpoint: Endpoint | None) -> OutboxMessage | None:
        if job.webhook_url is None:
            return None
        body = compact_json(render_data(job, endpoint))
        return OutboxMessage(
            job.webhook_id, job.webhook_url, body, SIGNER, context=signing_context(job), subject=job.id
        )

    def sign(self, keys: SigningKeys, delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        current = keys.signing_secrets(owner_of_delivery(delivery))[0]  # WaveSpeed's scheme takes one
        return wavespeed_sign_headers(current, delivery.id, timestamp, delivery.body)


WAVESPEED = WaveSpeedDialect()


# -- inputs ---------------------------------------------------------------------------------------


class _WaveSpeedOptions(StrictInput):
    """Seed and output options every WaveSpeed model takes."""

    seed: int = Field(default=-1, ge=-1, le=2**63 - 1, description="-1 picks one at random")
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"
    enable_base64_output: bool = False
    enable_safety_checker: bool = True
    enable_sync_mode: bool = False
    # WaveSpeed's LoRA models take them as fal's do; a model without LoRAs answers 400 naming the field.
    loras: list[LoraWeight] | None = Field(default=None, max_length=MAX_LORAS, description="[{path, scale}]")

    def _fal_options(self) -> dict[str, Any]:
        fal: dict[str, Any] = {
            "output_format": self.output_format,
            "enable_safety_checker": self.enable_safety_checker,
            "sync_mode": self.enable_base64_output,
        }
        if self.seed != -1:
            fal["seed"] = self.seed
        if self.loras is not None:
            fal["loras"] = [lora.model_dump(exclude_none=True) for lora in self.loras]
        return fal


class WaveSpeedTextToImageInput(_WaveSpeedOptions):
    """A WaveSpeed text-to-image model. `size` unset: the model's own default size (1024*1024 for
    I1, 2048*2048 for O1); the optional fields go to models that take them (a model that does not
    answers 400 naming the field)."""

    prompt: str = Field(min_length=1, max_length=10_000)
    size: str | None = Field(default=None, description='"width*height", each 256 to 4096')
    negative_prompt: str | None = Field(default=None, max_length=10_000)
    num_inference_steps: int | None = Field(default=None, ge=1, le=50)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=20.0)
    num_images: int | None = Field(default=None, ge=1, le=4)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = SIZE.match(value)
        if match is None:
            raise ValueError('size must look like "1024*1024"')
        low, high = SIDES
        for side in (int(match.group(1)), int(match.group(2))):
            if not low <= side <= high:
                raise ValueError(f"each side of size must be {low} to {high}")
        return value

    def to_fal(self) -> dict[str, Any]:
        fal: dict[str, Any] = {"prompt": self.prompt, **self._fal_options()}
        if self.size is not None:
            width, height = (int(side) for side in self.size.split("*"))
            fal["image_size"] = {"width": width, "height": height}
        for name in ("negative_prompt", "num_inference_steps", "guidance_scale", "num_images"):
            value = getattr(self, name)
            if value is not None:
                fal[name] = value
        return fal


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


WaveSpeedInput = type[WaveSpeedTextToImageInput] | type[WaveSpeedEditInput]


def input_model(endpoint: Endpoint) -> WaveSpeedInput:
    """The input shape WaveSpeed's clients send for an endpoint, by its task."""
    return WaveSpeedEditInput if endpoint.task is Task.INSTRUCTION_EDIT else WaveSpeedTextToImageInput


# -- tasks ----------------------------------------------------------------------------------------


def status_of(job: Job) -> str:
    if job.status is JobStatus.IN_QUEUE:
        return "created"
    if job.status is JobStatus.IN_PROGRESS:
        return "processing"
    if job.status is JobStatus.CANCELLED:
        return "cancelled"
    return "completed" if job.succeeded else "failed"


def render_data(job: Job, endpoint: Endpoint | None) -> dict[str, Any]:
    """The `data` object of WaveSpeed's envelope; webhooks carry it bare."""
    inference_ms = None if job.inference_time is None else round(job.inference_time * 1000)
    return {
        "id": job.id,
        "model": endpoint.names.get(WAVESPEED.id, job.endpoint) if endpoint is not None else job.endpoint,
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
