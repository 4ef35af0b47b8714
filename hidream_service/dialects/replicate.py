"""Replicate's predictions API, as the official `replicate` client uses it.

    POST /v1/models/{owner}/{name}/predictions     create (Prefer: wait[=N] holds the answer up to N s)
    POST /v1/predictions                           create, with `version` naming the model
    GET  /v1/predictions/{id}                      the prediction
    POST /v1/predictions/{id}/cancel
    GET  /v1/predictions                           newest first, paginated by `cursor`
    POST /v1/files                                 upload a file input (multipart field `content`)
    GET  /v1/webhooks/default/secret               {"key": "whsec_..."}, the signing secret
    POST /v1/webhooks/default/secret/rotate        new secret; the old one signs on for a grace period

Inputs come in Replicate's usual names (prompt, width, height, num_outputs, ...) and are mapped onto
the endpoint's fal schema by its task; errors are RFC 7807 documents, as Replicate answers. Webhooks
carry the prediction object, signed with Standard Webhooks headers; `start` and `logs` events are
sent when `webhook_events_filter` asks for them (once each, never retried), with the logs throttled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from hidream_service.api import submission
from hidream_service.api.errors import shaped_route
from hidream_service.api.openapi import json_body
from hidream_service.api.rendering import iso
from hidream_service.api.state import AppState, app_state
from hidream_service.dialects.base import Dialect, error_message, field_name
from hidream_service.dialects.common import compact_json, image_urls, log_text
from hidream_service.jobs.model import Job, JobStatus
from hidream_service.models.base import StrictInput
from hidream_service.models.family import Endpoint, Task
from hidream_service.signing_keys import SecretPinned, SigningKeys
from hidream_service.uploads import UploadTooLarge, store_upload
from webhooks.outbox import Delivery, OutboxMessage
from webhooks.signing import sign_headers

SIGNER = "standard"  # Standard Webhooks headers only
EVENTS = ("start", "output", "logs", "completed")


class ReplicateDialect(Dialect):
    id = "replicate"
    signer = SIGNER
    carries_logs = True  # a prediction object carries its logs

    def router(self, endpoints: Mapping[str, Endpoint]) -> APIRouter:
        return _router

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
        return OutboxMessage(job.webhook_id, job.webhook_url, body, SIGNER, subject=job.id)

    def progress(self, job: Job, endpoint: Endpoint | None, event: str, sequence: int) -> OutboxMessage | None:
        if job.webhook_url is None or event not in job.webhook_events:
            return None
        return OutboxMessage(
            f"{job.webhook_id}_{event}{sequence}",
            job.webhook_url,
            compact_json(render_prediction(job, endpoint)),
            SIGNER,
            subject=job.id,
            single_attempt=True,
        )

    def sign(self, keys: SigningKeys, delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        return sign_headers(keys.signing_secrets(), delivery.id, timestamp, delivery.body)


REPLICATE = ReplicateDialect()
_router = APIRouter(prefix="/v1", route_class=shaped_route(REPLICATE.render_error))


# -- inputs ---------------------------------------------------------------------------------------


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


def render_prediction(job: Job, endpoint: Endpoint | None) -> dict[str, Any]:
    """A prediction object as the replicate client parses it (id, model, version, status, urls...)."""
    model = endpoint.names.get(REPLICATE.id, job.endpoint) if endpoint is not None else job.endpoint
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


# -- routes ---------------------------------------------------------------------------------------

MAX_WAIT_SECONDS = 60
PAGE_SIZE = 50
MAX_CURSOR_DIGITS = 18  # cursors are job sequence numbers; a longer one would overflow SQLite
PREFER_WAIT = re.compile(r"^\s*wait(?:=(\d+))?\s*$")


class PredictionRequest(StrictInput):
    input: dict[str, Any] = Field(default_factory=dict)
    version: str | None = None
    webhook: str | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None
    stream: bool = False


def _prefer_wait(request: Request) -> int | None:
    header = request.headers.get("prefer")
    if header is None:
        return None
    match = PREFER_WAIT.match(header)
    if match is None:
        raise HTTPException(400, "Prefer must be 'wait' or 'wait=N' (1 to 60 seconds)")
    seconds = int(match.group(1) or MAX_WAIT_SECONDS)
    if not 1 <= seconds <= MAX_WAIT_SECONDS:
        raise HTTPException(400, "Prefer: wait=N takes 1 to 60 seconds")
    return seconds


def _rendered(state: AppState, job: Job) -> dict[str, Any]:
    return render_prediction(job, state.registry.endpoints.get(job.endpoint))


def _prediction(state: AppState, job: Job, status_code: int = 200) -> JSONResponse:
    return JSONResponse(_rendered(state, job), status_code=status_code)


async def _create(request: Request, model: str, body: PredictionRequest) -> JSONResponse:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    wait = _prefer_wait(request)
    models = REPLICATE.models(state.registry.endpoints.values())
    endpoint = models.get(model)
    if endpoint is None:
        raise HTTPException(404, f"model {model} not found; models here: {', '.join(sorted(models))}")
    inputs = submission.parse(input_model(endpoint), body.input)
    events = body.webhook_events_filter or ["output", "completed"]  # Replicate's default
    job = await submission.submit(
        state,
        request,
        endpoint_id=endpoint.id,
        fal_input=inputs.to_fal(),
        dialect=REPLICATE.id,
        webhook_url=body.webhook,
        client_input=body.input,
        webhook_events=events,
    )
    if wait is not None:
        job = await submission.until_terminal(state, job.id, owner, wait, with_logs=True)
        if not job.status.is_terminal():
            # As Replicate does: an unfinished prediction comes back as "starting", so that the
            # client keeps polling instead of taking a missing output for the answer.
            return JSONResponse({**_rendered(state, job), "status": "starting"}, status_code=201)
    return _prediction(state, job, 201)


@_router.post("/models/{owner}/{name}/predictions", openapi_extra=json_body(PredictionRequest))
async def create_for_model(request: Request, owner: str, name: str) -> JSONResponse:
    body = submission.parse(PredictionRequest, await submission.read_json_object(request))
    return await _create(request, f"{owner}/{name}", body)


@_router.post("/predictions", openapi_extra=json_body(PredictionRequest))
async def create(request: Request) -> JSONResponse:
    body = submission.parse(PredictionRequest, await submission.read_json_object(request))
    if not body.version:
        raise HTTPException(422, submission.one_error(["body", "version"], "version is required", "missing"))
    model = body.version.split(":", 1)[0]
    return await _create(request, model, body)


def _owned(state: AppState, request: Request, prediction_id: str) -> Job:
    job = state.service.get(prediction_id, state.api_keys.owner(request), with_logs=True)
    if job is None or job.dialect != REPLICATE.id:
        raise HTTPException(404, f"prediction {prediction_id} not found")
    return job


@_router.get("/predictions/{prediction_id}")
async def get_prediction(request: Request, prediction_id: str) -> JSONResponse:
    state = app_state(request)
    return _prediction(state, _owned(state, request, prediction_id))


@_router.post("/predictions/{prediction_id}/cancel")
async def cancel_prediction(request: Request, prediction_id: str) -> JSONResponse:
    state = app_state(request)
    job = _owned(state, request, prediction_id)
    state.service.cancel(job.id, job.owner)
    return _prediction(state, _owned(state, request, prediction_id))


@_router.get("/predictions")
async def list_predictions(request: Request, cursor: str | None = None) -> dict[str, Any]:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    if cursor is not None and not re.fullmatch(f"[0-9]{{1,{MAX_CURSOR_DIGITS}}}", cursor):  # not isdigit(): "²"
        raise HTTPException(400, "cursor is not valid")
    jobs = state.service.store.page(owner, REPLICATE.id, before_seq=int(cursor) if cursor else None, limit=PAGE_SIZE)
    following = None
    if len(jobs) == PAGE_SIZE:
        following = f"{submission.base_url(state, request)}/v1/predictions?cursor={jobs[-1].seq}"
    return {"previous": None, "next": following, "results": [_rendered(state, job) for job in jobs]}


@_router.post("/files")
async def upload_file(request: Request) -> JSONResponse:
    state = app_state(request)
    state.api_keys.owner(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > state.settings.max_upload_bytes + 64 * 1024:
        raise HTTPException(413, f"files are limited to {state.settings.max_upload_bytes} bytes")
    form = await request.form()
    content = form.get("content")
    if content is None or isinstance(content, str):
        raise HTTPException(422, submission.one_error(["body", "content"], "a file part named content", "missing"))
    metadata_raw = form.get("metadata")
    try:
        metadata = json.loads(metadata_raw) if isinstance(metadata_raw, str) and metadata_raw else {}
    except json.JSONDecodeError:
        raise HTTPException(422, submission.one_error(["body", "metadata"], "not valid JSON", "json_invalid")) from None

    async def chunks() -> Any:
        while chunk := await content.read(1 << 16):
            yield chunk

    try:
        upload = await store_upload(
            state.storage,
            chunks(),
            name=content.filename,
            content_type=content.content_type,
            max_bytes=state.settings.max_upload_bytes,
            base_url=submission.base_url(state, request),
        )
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    finally:
        await form.close()
    body = {
        "id": upload.id,
        "name": upload.name,
        "content_type": upload.content_type,
        "size": upload.size,
        "etag": upload.md5,
        "checksums": {"sha256": upload.sha256, "md5": upload.md5},
        "metadata": metadata if isinstance(metadata, dict) else {},
        "created_at": iso(upload.created_at),
        "expires_at": None,
        "urls": {"get": upload.url},
    }
    return JSONResponse(body, status_code=201)


@_router.get("/webhooks/default/secret")
async def signing_secret(request: Request) -> dict[str, str]:
    state = app_state(request)
    state.api_keys.owner(request)
    return {"key": state.keys.current_secret}


@_router.post("/webhooks/default/secret/rotate")
async def rotate_secret(request: Request) -> dict[str, Any]:
    state = app_state(request)
    state.api_keys.owner(request)
    try:
        secret, previous_until = state.keys.rotate()
    except SecretPinned as exc:
        raise HTTPException(400, str(exc)) from None
    return {"key": secret, "previous_key_valid_until": _iso_offset(previous_until)}


def _iso_offset(timestamp: float | None) -> str | None:
    """As this route has always written it: ISO 8601 with +00:00."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()
