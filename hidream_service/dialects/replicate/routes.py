"""Replicate's routes (see the package's docstring for the API)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from hidream_service.api import submission
from hidream_service.api.bodies import read_form
from hidream_service.api.errors import add_fallbacks, shaped_route
from hidream_service.api.openapi import json_body
from hidream_service.api.rendering import iso, iso_offset
from hidream_service.api.state import AppState, app_state
from hidream_service.dialects.replicate import REPLICATE, input_model, render_prediction
from hidream_service.jobs.model import Job
from hidream_service.models.base import StrictInput
from hidream_service.signing_keys import SecretPinned
from hidream_service.uploads import UploadTooLarge, store_upload

router = APIRouter(prefix="/v1", route_class=shaped_route(REPLICATE.render_error))


MAX_WAIT_SECONDS = 60
PAGE_SIZE = 50
MAX_CURSOR_DIGITS = 18  # cursors are job sequence numbers; a longer one would overflow SQLite
PREFER_WAIT = re.compile(r"^\s*wait(?:=([0-9]{1,9}))?\s*$")  # int() refuses 5000 digits


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
        # A caller that hangs up cancels a prediction without a webhook: nobody else knows its id.
        job = await submission.until_terminal(state, job.id, owner, wait, with_logs=True, request=request)
        if not job.status.is_terminal():
            # As Replicate does: an unfinished prediction comes back as "starting", so that the
            # client keeps polling instead of taking a missing output for the answer.
            return JSONResponse({**_rendered(state, job), "status": "starting"}, status_code=201)
    return _prediction(state, job, 201)


@router.post("/models/{owner}/{name}/predictions", openapi_extra=json_body(PredictionRequest))
async def create_for_model(request: Request, owner: str, name: str) -> JSONResponse:
    body = submission.parse(PredictionRequest, await submission.read_json_object(request))
    return await _create(request, f"{owner}/{name}", body)


@router.post("/predictions", openapi_extra=json_body(PredictionRequest))
async def create(request: Request) -> JSONResponse:
    body = submission.parse(PredictionRequest, await submission.read_json_object(request))
    if not body.version:
        raise HTTPException(422, submission.one_error(["body", "version"], "version is required", "missing"))
    model = body.version.split(":", 1)[0]
    return await _create(request, model, body)


async def _owned(state: AppState, request: Request, prediction_id: str) -> Job:
    job = await state.store_call(state.service.get, prediction_id, state.api_keys.owner(request), with_logs=True)
    if job is None or job.dialect != REPLICATE.id:
        raise HTTPException(404, f"prediction {prediction_id} not found")
    return job


@router.get("/predictions/{prediction_id}")
async def get_prediction(request: Request, prediction_id: str) -> JSONResponse:
    state = app_state(request)
    return _prediction(state, await _owned(state, request, prediction_id))


@router.post("/predictions/{prediction_id}/cancel")
async def cancel_prediction(request: Request, prediction_id: str) -> JSONResponse:
    state = app_state(request)
    job = await _owned(state, request, prediction_id)
    await state.store_call(state.service.cancel, job.id, job.owner)
    return _prediction(state, await _owned(state, request, prediction_id))


@router.get("/predictions")
async def list_predictions(request: Request, cursor: str | None = None) -> dict[str, Any]:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    if cursor is not None and not re.fullmatch(f"[0-9]{{1,{MAX_CURSOR_DIGITS}}}", cursor):  # not isdigit(): "²"
        raise HTTPException(400, "cursor is not valid")
    jobs = await state.store_call(
        state.service.store.page, owner, REPLICATE.id, before_seq=int(cursor) if cursor else None, limit=PAGE_SIZE
    )
    following = None
    if len(jobs) == PAGE_SIZE:
        following = f"{submission.base_url(state, request)}/v1/predictions?cursor={jobs[-1].seq}"
    return {"previous": None, "next": following, "results": [_rendered(state, job) for job in jobs]}


@router.post("/files")
async def upload_file(request: Request) -> JSONResponse:
    state = app_state(request)
    state.api_keys.owner(request)
    # The file, its metadata and the multipart framing: capped as the body arrives, chunked or not.
    form = await read_form(
        request,
        max_bytes=state.settings.max_upload_bytes + 64 * 1024,
        max_files=2,  # `content`, and `metadata` should a client send it as a file
        max_fields=8,
        message=f"files are limited to {state.settings.max_upload_bytes} bytes",
    )
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


@router.get("/webhooks/default/secret")
async def signing_secret(request: Request) -> dict[str, str]:
    """The secret that signs the calling key's webhooks (each key has its own)."""
    state = app_state(request)
    owner = state.api_keys.owner(request)
    return {"key": await state.store_call(state.keys.webhook_secret, owner)}


@router.post("/webhooks/default/secret/rotate")
async def rotate_secret(request: Request) -> dict[str, Any]:
    """A new secret for the calling key; its previous one signs beside it for the grace period."""
    state = app_state(request)
    owner = state.api_keys.owner(request)
    try:
        secret, previous_until = await state.store_call(state.keys.rotate, owner)
    except SecretPinned as exc:
        raise HTTPException(400, str(exc)) from None
    return {"key": secret, "previous_key_valid_until": iso_offset(previous_until)}


# Last: what none of the routes above takes under Replicate's paths is answered in Replicate's shape.
add_fallbacks(
    router,
    "/predictions",
    "/predictions/{rest:path}",
    "/models/{rest:path}",
    "/files",
    "/files/{rest:path}",
    "/webhooks/default/{rest:path}",
)
