"""WaveSpeed's routes (see the package's docstring for the API)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from hidream_service.api import fal_storage, submission
from hidream_service.api.errors import add_fallbacks, shaped_route
from hidream_service.api.openapi import json_body
from hidream_service.api.state import AppState, app_state
from hidream_service.dialects.wavespeed import (
    WAVESPEED,
    UploadTicketRequest,
    WaveSpeedTextToImageInput,
    envelope,
    input_model,
    render_data,
)
from hidream_service.jobs.model import Job

router = APIRouter(prefix="/api/v3", route_class=shaped_route(WAVESPEED.render_error))


def _data(state: AppState, job: Job) -> dict[str, Any]:
    return render_data(job, state.registry.endpoints.get(job.endpoint))


def _answer(state: AppState, job: Job) -> JSONResponse:
    return JSONResponse(envelope(_data(state, job)))


@router.get("/webhook/secret")
async def secret(request: Request) -> dict[str, Any]:
    """The secret that signs the calling key's webhooks (each key has its own)."""
    state = app_state(request)
    owner = state.api_keys.owner(request)
    return envelope({"secret": await state.store_call(state.keys.webhook_secret, owner)})


@router.get("/predictions/{task_id}/result")
async def result(request: Request, task_id: str) -> JSONResponse:
    return await _get(request, task_id)


@router.get("/predictions/{task_id}")
async def task(request: Request, task_id: str) -> JSONResponse:
    return await _get(request, task_id)


async def _get(request: Request, task_id: str) -> JSONResponse:
    state = app_state(request)
    job = await state.store_call(state.service.get, task_id, state.api_keys.owner(request))
    if job is None or job.dialect != WAVESPEED.id:
        raise HTTPException(404, f"task {task_id} not found")
    return _answer(state, job)


@router.post("/media/uploads", openapi_extra=json_body(UploadTicketRequest))
async def media_upload(request: Request) -> dict[str, Any]:
    """The upload ticket `wavespeed.upload()` asks for; the file then goes to our one-time PUT URL."""
    state = app_state(request)
    state.api_keys.owner(request)
    ticket = submission.parse(UploadTicketRequest, await submission.read_json_object(request))
    if ticket.size > state.settings.max_upload_bytes:
        raise HTTPException(413, f"uploads are limited to {state.settings.max_upload_bytes} bytes")
    upload_url, file_url = fal_storage.begin_upload(state, request, ticket.filename)
    headers = {"Content-Type": ticket.content_type} if ticket.content_type else {}
    return envelope({"upload": {"method": "PUT", "url": upload_url, "headers": headers}, "download_url": file_url})


@router.post("/{owner}/{model}", openapi_extra=json_body(WaveSpeedTextToImageInput))
async def submit(request: Request, owner: str, model: str, webhook: str | None = Query(None)) -> JSONResponse:
    state = app_state(request)
    caller = state.api_keys.owner(request)
    model_id = f"{owner}/{model}"
    models = WAVESPEED.models(state.registry.endpoints.values())
    endpoint = models.get(model_id)
    if endpoint is None:
        raise HTTPException(404, f"model {model_id} not found; models here: {', '.join(sorted(models))}")
    payload = await submission.read_json_object(request)
    body_webhook = payload.pop("webhook_url", None)
    if body_webhook is not None and not isinstance(body_webhook, str):
        raise HTTPException(422, submission.one_error(["body", "webhook_url"], "must be a URL string", "string_type"))
    inputs = submission.parse(input_model(endpoint), payload)
    job = await submission.submit(
        state,
        request,
        endpoint_id=endpoint.id,
        fal_input=inputs.to_fal(),
        dialect=WAVESPEED.id,
        webhook_url=webhook or body_webhook,
        webhook_field=("query", "webhook") if webhook else ("body", "webhook_url"),
        client_input=payload,
    )
    if inputs.enable_sync_mode:
        job = await submission.until_terminal(
            state, job.id, caller, state.settings.sync_timeout_seconds, request=request
        )
        if not job.status.is_terminal():
            data = {**_data(state, job), "error": "Sync mode timed out; poll urls.get for the result"}
            return JSONResponse(envelope(data, 5004, "sync mode timed out"))
    return _answer(state, job)


# Last: what none of the routes above takes under /api/v3 is answered in WaveSpeed's shape.
add_fallbacks(router, "/{rest:path}")
