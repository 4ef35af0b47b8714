"""Replicate's predictions API, as the official `replicate` client uses it.

    POST /v1/models/{owner}/{name}/predictions     create (Prefer: wait[=N] holds the answer up to N s)
    POST /v1/predictions                           create, `version` naming the model: a version id,
                                                   owner/name or owner/name:<version id>
    GET  /v1/predictions/{id}                      the prediction
    GET  /v1/predictions/{id}/stream               its server-sent events (`urls.stream`; see below)
    POST /v1/predictions/{id}/cancel
    GET  /v1/predictions                           newest first, paginated by `cursor`
    GET  /v1/models/{owner}/{name}                 one, its `latest_version` included
    GET  /v1/models/{owner}/{name}/versions[/{id}] its version (versions.py says how ids are made)
    POST /v1/files                                 upload a file input (multipart field `content`)
    GET  /v1/webhooks/default/secret               {"key": "whsec_..."}, the calling key's signing secret
    POST /v1/webhooks/default/secret/rotate        a new one; the old one signs on for a grace period

Inputs come in Replicate's usual names (prompt, width, height, num_outputs, ...) and are mapped onto
the endpoint's fal schema by its task; errors are RFC 7807 documents, as Replicate answers. Webhooks
carry the prediction object, signed with Standard Webhooks headers; `start` and `logs` events are
sent when `webhook_events_filter` asks for them (once each, never retried), with the logs throttled.

The stream (`replicate.stream`, or any EventSource on `urls.stream`) sends Replicate's events, each
with an id: `logs` (one per log line, the `step i/n` progress lines among them; a stream opened late
first replays the lines so far), then, when the prediction succeeds, one `output` per image URL and
`done` ({}). A failed prediction ends with `error` ({"detail": message}) and `done`
({"reason": "error"}), a cancelled one with `done` ({"reason": "canceled"}). Previews of the forming
image come only when asked for, with `?previews=true` on the stream URL or a `Hidream-Previews: true`
header (which the clients can send with every request): then `output` events also carry them while
the prediction runs, as `data:image/jpeg;base64,...` URIs, told from the result by that scheme. Not
by default, since a client that collects every `output` event would take the previews for results.
The stream URL in an API answer carries a token signed for the prediction, as Replicate's stream
URLs are capabilities: the JS client opens it without the API key. A request that does send a key
must send the prediction's own; webhooks (rendered where nothing signs) give the URL without a token,
which then takes the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from hidream_service.api.rendering import iso
from hidream_service.dialects.base import Dialect, error_message, field_name
from hidream_service.dialects.common import compact_json, image_urls, log_text, owner_of_delivery, signing_context
from hidream_service.jobs.model import Job, JobStatus
from hidream_service.models.base import StrictInput
from hidream_service.models.family import Endpoint, Task
from hidream_service.models.loras import MAX_LORA_PATH_LENGTH, MAX_LORA_SCALE, MIN_LORA_SCALE
from hidream_service.signing_keys import SigningKeys
from webhooks.outbox import Delivery, OutboxMessage
from webhooks.signing import sign_headers

if TYPE_CHECKING:
    from fastapi import APIRouter

SIGNER = "standard"  # Standard Webhooks headers only


class ReplicateDialect(Dialect):
    id = "replicate"
    signer = SIGNER
    carries_logs = True  # a prediction object carries its logs

    def router(self, endpoints: Mapping[str, Endpoint]) -> APIRouter:
        from hidream_service.dialects.replicate.routes import router

        return router

    def render_error(self, status: int, detail: Any) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"title": HTTPStatus(status).phrase, "detail": error_message(detail), "status": status}
        if isinstance(detail, list):
            body["title"] = "Input validation failed"
            body["invalid_fields"] = [
                {"type": error.get("type"), "field": field_name(error), "description": error.get("msg")}
                for error in detail
            ]
        return status, body

    def ending(self, job: Job, endpoint: Endpoint | None) -> OutboxMessage | None:
        if job.webhook_url is None:
            return None
        if "completed" not in job.webhook_events and "output" not in job.webhook_events:
            return None
        body = compact_json(render_prediction(job, endpoint))
        return OutboxMessage(
            job.webhook_id, job.webhook_url, body, SIGNER, context=signing_context(job), subject=job.id
        )

    def progress(self, job: Job, endpoint: Endpoint | None, event: str, sequence: int) -> OutboxMessage | None:
        if job.webhook_url is None or event not in job.webhook_events:
            return None
        return OutboxMessage(
            f"{job.webhook_id}_{event}{sequence}",
            job.webhook_url,
            compact_json(render_prediction(job, endpoint)),
            SIGNER,
            context=signing_context(job),
            subject=job.id,
            single_attempt=True,
        )

    def sign(self, keys: SigningKeys, delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        return sign_headers(keys.signing_secrets(owner_of_delivery(delivery)), delivery.id, timestamp, delivery.body)


REPLICATE = ReplicateDialect()


# -- inputs ---------------------------------------------------------------------------------------


class _ReplicateLoras(StrictInput):
    """LoRAs as Replicate's LoRA image models take them: `lora_weights` and `lora_scale`, and a second
    one as its trained fine-tunes take it, `extra_lora` and `extra_lora_scale`; onto fal's `loras`."""

    lora_weights: str | None = Field(
        default=None,
        max_length=MAX_LORA_PATH_LENGTH,
        description="A LoRA (.safetensors): an https URL, the URL of a file uploaded here, or a Hugging Face "
        "owner/repo[/file][@revision] where the server has hub access.",
    )
    lora_scale: float = Field(default=1.0, ge=MIN_LORA_SCALE, le=MAX_LORA_SCALE, description="Its strength.")
    extra_lora: str | None = Field(default=None, max_length=MAX_LORA_PATH_LENGTH, description="A second LoRA.")
    extra_lora_scale: float = Field(default=1.0, ge=MIN_LORA_SCALE, le=MAX_LORA_SCALE, description="Its strength.")

    def _fal_loras(self) -> dict[str, Any]:
        pairs = ((self.lora_weights, self.lora_scale), (self.extra_lora, self.extra_lora_scale))
        loras = [{"path": path, "scale": scale} for path, scale in pairs if path]
        return {"loras": loras} if loras else {}


class ReplicateImageInput(_ReplicateLoras):
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
            **self._fal_loras(),
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


class ReplicateEditInput(_ReplicateLoras):
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
            **self._fal_loras(),
        }
        optional = ("target_image_description", "negative_prompt", "num_inference_steps", "guidance_scale")
        for name in (*optional, "image_guidance_scale", "refine_strength", "seed"):
            value = getattr(self, name)
            if value is not None:
                fal[name] = value
        return fal


ReplicateInput = type[ReplicateImageInput] | type[ReplicateNoopInput] | type[ReplicateEditInput]


def input_model(endpoint: Endpoint) -> ReplicateInput:
    """The input shape Replicate's clients send for an endpoint, by its task."""
    if endpoint.task is Task.LIFECYCLE:
        return ReplicateNoopInput
    return ReplicateEditInput if endpoint.task is Task.INSTRUCTION_EDIT else ReplicateImageInput


# -- predictions ----------------------------------------------------------------------------------

STATUS = {
    JobStatus.IN_QUEUE: "starting",
    JobStatus.IN_PROGRESS: "processing",
    JobStatus.CANCELLED: "canceled",
}


def status_of(job: Job) -> str:
    if job.status is JobStatus.COMPLETED:
        return "succeeded" if job.succeeded else "failed"
    return STATUS[job.status]


def render_prediction(job: Job, endpoint: Endpoint | None, *, stream_token: str | None = None) -> dict[str, Any]:
    """A prediction object as the replicate client parses it (id, model, version, status, urls...).
    `urls.stream` carries `stream_token` where the routes give one; without it (in webhooks, which
    are rendered where no key signs it) the stream takes the prediction's API key only."""
    from hidream_service.dialects.replicate.versions import version_of  # versions.py reads the inputs above

    name = endpoint.names.get(REPLICATE.id) if endpoint is not None else None
    model = name or job.endpoint
    base = f"{job.base_url}/v1/predictions/{job.id}"
    urls = image_urls(job)
    stream = f"{base}/stream" if stream_token is None else f"{base}/stream?token={stream_token}"
    return {
        "id": job.id,
        "model": model,
        # The version it runs (for a model this release no longer has: its name, all that is known).
        "version": version_of(name, endpoint).id if name and endpoint is not None else model,
        "status": status_of(job),
        "input": job.client_input if job.client_input is not None else job.input,
        "output": urls if job.succeeded and urls else None,
        "logs": log_text(job),
        "error": None if job.succeeded else job.error,
        "metrics": {"predict_time": job.inference_time} if job.inference_time is not None else {},
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "urls": {"get": base, "cancel": f"{base}/cancel", "stream": stream},
        "data_removed": False,
    }
