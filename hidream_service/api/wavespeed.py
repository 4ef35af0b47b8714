"""WaveSpeed's v3 API, as the official `wavespeed` client uses it.

    POST /api/v3/{owner}/{model}[?webhook=URL]     submit -> HTTP 200 {code, message, data}
    GET  /api/v3/predictions/{id}/result           the task (the SDK polls this)
    GET  /api/v3/predictions/{id}                  the same, as the REST docs name it
    GET  /api/v3/webhook/secret                    the signing secret, as WaveSpeed serves it
    POST /api/v3/media/uploads                     {filename, size} -> a PUT instruction and download_url

Webhooks carry the bare `data` object, signed WaveSpeed's way (`webhook-signature: v3,<hex>`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from hidream_service.api import fal_storage, submission
from hidream_service.api.openapi import json_body
from hidream_service.api.state import app_state
from hidream_service.dialects import wavespeed
from hidream_service.jobs.model import Job

router = APIRouter(prefix="/api/v3")


def _answer(job: Job) -> JSONResponse:
    return JSONResponse(wavespeed.envelope(wavespeed.render_data(job)))


@router.get("/webhook/secret")
async def secret(request: Request) -> dict[str, Any]:
    state = app_state(request)
    state.api_keys.owner(request)
    return wavespeed.envelope({"secret": state.keys.current_secret})


@router.get("/predictions/{task_id}/result")
async def result(request: Request, task_id: str) -> JSONResponse:
    return await _get(request, task_id)


@router.get("/predictions/{task_id}")
async def task(request: Request, task_id: str) -> JSONResponse:
    return await _get(request, task_id)


async def _get(request: Request, task_id: str) -> JSONResponse:
    state = app_state(request)
    job = state.service.get(task_id, state.api_keys.owner(request))
    if job is None or job.dialect != "wavespeed":
        raise HTTPException(404, f"task {task_id} not found")
    return _answer(job)


@router.post("/media/uploads", openapi_extra=json_body(wavespeed.UploadTicketRequest))
async def media_upload(request: Request) -> dict[str, Any]:
    """The upload ticket `wavespeed.upload()` asks for; the file then goes to our one-time PUT URL."""
    state = app_state(request)
    state.api_keys.owner(request)
    ticket = submission.parse(wavespeed.UploadTicketRequest, await submission.read_json_object(request))
    if ticket.size > state.settings.max_upload_bytes:
        raise HTTPException(413, f"uploads are limited to {state.settings.max_upload_bytes} bytes")
    upload_url, file_url = fal_storage.begin_upload(state, request, ticket.filename)
    headers = {"Content-Type": ticket.content_type} if ticket.content_type else {}
    return wavespeed.envelope(
        {"upload": {"method": "PUT", "url": upload_url, "headers": headers}, "download_url": file_url}
    )


@router.post("/{owner}/{model}", openapi_extra=json_body(wavespeed.WaveSpeedImageInput))
async def submit(request: Request, owner: str, model: str, webhook: str | None = Query(None)) -> JSONResponse:
    state = app_state(request)
    caller = state.api_keys.owner(request)
    model_id = f"{owner}/{model}"
    if model_id not in wavespeed.MODELS:
        raise HTTPException(404, f"model {model_id} not found; models here: {', '.join(sorted(wavespeed.MODELS))}")
    payload = await submission.read_json_object(request)
    body_webhook = payload.pop("webhook_url", None)
    if body_webhook is not None and not isinstance(body_webhook, str):
        raise HTTPException(422, submission.one_error(["body", "webhook_url"], "must be a URL string", "string_type"))
    inputs = submission.parse(wavespeed.input_model(model_id), payload)
    job = await submission.submit(
        state,
        request,
        endpoint_id=wavespeed.MODELS[model_id],
        fal_input=inputs.to_fal(),
        dialect="wavespeed",
        webhook_url=webhook or body_webhook,
        webhook_field=("query", "webhook") if webhook else ("body", "webhook_url"),
        client_input=payload,
    )
    if inputs.enable_sync_mode:
        job = await submission.until_terminal(state, job.id, caller, state.settings.sync_timeout_seconds)
        if not job.status.is_terminal():
            data = {**wavespeed.render_data(job), "error": "Sync mode timed out; poll urls.get for the result"}
            return JSONResponse(wavespeed.envelope(data, 5004, "sync mode timed out"))
    return _answer(job)
