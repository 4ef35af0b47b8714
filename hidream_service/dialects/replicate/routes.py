"""Replicate's routes (see the package's docstring for the API)."""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from hidream_service.api import submission
from hidream_service.api.bodies import read_form
from hidream_service.api.errors import add_fallbacks, shaped_route
from hidream_service.api.openapi import json_body
from hidream_service.api.rendering import iso, iso_offset
from hidream_service.api.state import AppState, app_state
from hidream_service.api.streaming import KEEPALIVE, KEEPALIVE_SECONDS, event_stream, job_updates, sse
from hidream_service.dialects.common import image_urls
from hidream_service.dialects.replicate import REPLICATE, input_model, render_prediction
from hidream_service.dialects.replicate.versions import (
    ModelVersion,
    find_version,
    render_model,
    render_version,
    version_of,
)
from hidream_service.jobs.model import Job, JobStatus
from hidream_service.models.base import StrictInput
from hidream_service.models.family import Endpoint
from hidream_service.signing_keys import SecretPinned
from hidream_service.uploads import UploadTooLarge, store_upload

router = APIRouter(prefix="/v1", route_class=shaped_route(REPLICATE.render_error))


MAX_WAIT_SECONDS = 60
PAGE_SIZE = 50
MAX_CURSOR_DIGITS = 18  # cursors are job sequence numbers; a longer one would overflow SQLite
PREFER_WAIT = re.compile(r"^\s*wait(?:=([0-9]{1,9}))?\s*$")  # int() refuses 5000 digits
#: The header that asks a stream for previews of the forming image (as `?previews=true` does): the
#: official clients cannot change the stream URL, but can send a header with every request.
PREVIEWS_HEADER = "hidream-previews"
TRUE_WORDS = {"1", "true", "yes", "on"}


class PredictionRequest(StrictInput):
    input: dict[str, Any] = Field(default_factory=dict)
    version: str | None = None
    webhook: str | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None
    stream: bool = False  # the clients' replicate.stream() sends it; every prediction has `urls.stream`


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


def _stream_token(state: AppState, job: Job) -> str:
    """What lets `urls.stream` be opened without the API key (the JS client sends none there):
    signed with the server key, so only the answers the prediction's own key gets hold it."""
    return state.keys.token_mac(f"replicate stream.{job.id}.{job.owner}")


def _rendered(state: AppState, job: Job) -> dict[str, Any]:
    return render_prediction(job, state.registry.endpoints.get(job.endpoint), stream_token=_stream_token(state, job))


def _prediction(state: AppState, job: Job, status_code: int = 200) -> JSONResponse:
    return JSONResponse(_rendered(state, job), status_code=status_code)


async def _create(request: Request, endpoint: Endpoint, body: PredictionRequest) -> JSONResponse:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    wait = _prefer_wait(request)
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


def _models(state: AppState, *, served_only: bool) -> dict[str, Endpoint]:
    """Replicate's model table: of the endpoints served here, or of all (whose submit then says
    which are not served)."""
    endpoints = state.endpoints if served_only else state.registry.endpoints
    return REPLICATE.models(endpoints.values())


@router.post("/models/{owner}/{name}/predictions", openapi_extra=json_body(PredictionRequest))
async def create_for_model(request: Request, owner: str, name: str) -> JSONResponse:
    body = submission.parse(PredictionRequest, await submission.read_json_object(request))
    state = app_state(request)
    state.api_keys.owner(request)
    models = _models(state, served_only=False)
    endpoint = models.get(f"{owner}/{name}")
    if endpoint is None:
        raise HTTPException(404, f"model {owner}/{name} not found; models here: {', '.join(sorted(models))}")
    return await _create(request, endpoint, body)


@router.post("/predictions", openapi_extra=json_body(PredictionRequest))
async def create(request: Request) -> JSONResponse:
    body = submission.parse(PredictionRequest, await submission.read_json_object(request))
    if not body.version:
        raise HTTPException(422, submission.one_error(["body", "version"], "version is required", "missing"))
    state = app_state(request)
    state.api_keys.owner(request)
    # All of the reference is checked before anything is submitted: a version that names nothing
    # served here must not start a job (the clients' run() looks the version up only afterwards).
    version = find_version(_models(state, served_only=False), body.version)
    if version is None:
        raise HTTPException(
            422,
            submission.one_error(
                ["body", "version"],
                f"version {body.version} does not exist here; GET /v1/models/{{owner}}/{{name}} gives a "
                "model's latest_version (or send owner/name)",
                "invalid_version",
            ),
        )
    return await _create(request, version.endpoint, body)


async def _owned(state: AppState, request: Request, prediction_id: str) -> Job:
    job = await state.store_call(state.service.get, prediction_id, state.api_keys.owner(request), with_logs=True)
    if job is None or job.dialect != REPLICATE.id:
        raise HTTPException(404, f"prediction {prediction_id} not found")
    return job


@router.get("/predictions/{prediction_id}")
async def get_prediction(request: Request, prediction_id: str) -> JSONResponse:
    state = app_state(request)
    return _prediction(state, await _owned(state, request, prediction_id))


@router.get("/predictions/{prediction_id}/stream", response_class=StreamingResponse)
async def stream_prediction(
    request: Request, prediction_id: str, token: str | None = None, previews: bool = False
) -> StreamingResponse:
    """The prediction's server-sent events (the package's docstring lists them). Closing the stream
    leaves the prediction running: it is a view of it, as on Replicate."""
    state = app_state(request)
    job = await _streamed(state, request, prediction_id, token)
    asked = request.headers.get(PREVIEWS_HEADER, "").strip().lower() in TRUE_WORDS
    return event_stream(_prediction_events(state, job, with_previews=previews or asked))


async def _streamed(state: AppState, request: Request, prediction_id: str, token: str | None) -> Job:
    """The prediction a stream may show: one of the caller's key, or, where no key is sent, the one
    whose signed stream URL this is."""
    if token is None or "authorization" in request.headers or not state.api_keys.enabled:
        return await _owned(state, request, prediction_id)
    job = await state.store_call(state.service.store.get, prediction_id)
    if job is None or job.dialect != REPLICATE.id or not hmac.compare_digest(token, _stream_token(state, job)):
        raise HTTPException(404, f"prediction {prediction_id} not found")
    return job


async def _prediction_events(state: AppState, job: Job, *, with_previews: bool) -> AsyncIterator[str]:
    numbers = itertools.count(1)

    def event(name: str, data: Any) -> str:
        return f"id: {next(numbers)}\n{sse(data, name)}"  # the Python client drops events without an id

    async with contextlib.aclosing(
        job_updates(state, job.id, job.owner, with_logs=True, with_previews=with_previews, keepalive=KEEPALIVE_SECONDS)
    ) as updates:
        async for update in updates:
            if update is None:
                yield KEEPALIVE
                continue
            for line in update.new_logs:
                yield event("logs", line.message)
            if update.preview is not None:
                yield event("output", update.preview.image)
            if not update.ended:
                continue
            ended = update.job
            if ended.succeeded:
                for url in image_urls(ended):
                    yield event("output", url)
                yield event("done", {})
            elif ended.status is JobStatus.CANCELLED:
                yield event("done", {"reason": "canceled"})
            else:
                yield event("error", {"detail": ended.error})
                yield event("done", {"reason": "error"})


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


@router.get("/models/{owner}/{name}")
async def get_model(request: Request, owner: str, name: str) -> dict[str, Any]:
    state = app_state(request)
    return render_model(_model_version(state, request, owner, name), submission.base_url(state, request))


@router.get("/models/{owner}/{name}/versions")
async def list_versions(request: Request, owner: str, name: str) -> dict[str, Any]:
    state = app_state(request)
    version = _model_version(state, request, owner, name)
    return {"previous": None, "next": None, "results": [render_version(version)]}


@router.get("/models/{owner}/{name}/versions/{version_id:path}")
async def get_version(request: Request, owner: str, name: str, version_id: str) -> dict[str, Any]:
    """One version of a model. The model's own name stands for its version here as it does in a
    prediction's `version`: run("owner/name:owner/name") creates its prediction, then asks this."""
    state = app_state(request)
    version = _model_version(state, request, owner, name)
    if version_id not in (version.id, version.model):
        raise HTTPException(404, f"version {version_id} of {version.model} not found; its version is {version.id}")
    return render_version(version)


def _model_version(state: AppState, request: Request, owner: str, name: str) -> ModelVersion:
    """A model served here, as its version."""
    state.api_keys.owner(request)
    models = _models(state, served_only=True)
    endpoint = models.get(f"{owner}/{name}")
    if endpoint is None:
        raise HTTPException(404, f"model {owner}/{name} not found; models here: {', '.join(sorted(models))}")
    return version_of(f"{owner}/{name}", endpoint)


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
