"""OpenAI's routes (see the package's docstring for the API)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from hidream_service.api import submission
from hidream_service.api.bodies import read_form
from hidream_service.api.errors import add_fallbacks, shaped_route
from hidream_service.api.openapi import json_body
from hidream_service.api.state import AppState, app_state
from hidream_service.api.streaming import KEEPALIVE, JobUpdate, event_stream, run_updates, sse
from hidream_service.dialects.openai import (
    OPENAI,
    EditRequest,
    GenerationRequest,
    ImagesRequest,
    edit_models,
    generation_models,
    render_images_response,
)
from hidream_service.jobs.model import Job

router = APIRouter(prefix="/v1", route_class=shaped_route(OPENAI.render_error))


EDIT_FIELDS = {
    "image",
    "image[]",
    "mask",
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "output_format",
    "user",
    "seed",
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "stream",
    "partial_images",
    "loras",
}


@router.post("/images/generations", openapi_extra=json_body(GenerationRequest))
async def generations(request: Request) -> Any:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    body = submission.parse(GenerationRequest, await submission.read_json_object(request))
    models = generation_models(state.registry.endpoints.values())
    endpoint = models.get(body.model)
    if endpoint is None:
        raise HTTPException(404, f"The model '{body.model}' does not exist; models here: {', '.join(models)}")
    job = await submission.submit(state, request, endpoint_id=endpoint.id, fal_input=body.to_fal(), dialect=OPENAI.id)
    if body.stream:
        return _streamed(state, job, "image_generation", body)
    return await _answer(state, request, job.id, owner, int(job.created_at), body.output_format)


@router.post("/images/edits")
async def edits(request: Request) -> Any:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    # The body is capped as it arrives (chunked or not), so no more than this is ever spooled.
    editing = edit_models(state.registry.endpoints.values()).values()
    most_images = max((endpoint.max_images for endpoint in editing), default=1)
    limit = most_images * state.settings.max_image_bytes + (1 << 20)
    form = await read_form(
        request,
        max_bytes=limit,
        max_files=most_images + 1,  # the images, and a mask to refuse by name
        max_fields=len(EDIT_FIELDS),
        message=f"request body is larger than {limit} bytes",
    )
    try:
        unknown = sorted(set(form.keys()) - EDIT_FIELDS)
        if unknown:
            raise HTTPException(400, f"unknown fields: {', '.join(unknown)}")
        images = [part for part in form.getlist("image") + form.getlist("image[]") if isinstance(part, UploadFile)]
        if not images:
            raise HTTPException(400, submission.one_error(["body", "image"], "at least one image file", "missing"))
        if "mask" in form:
            raise HTTPException(
                400, submission.one_error(["body", "mask"], "masks are not supported: HiDream edits by instruction", "")
            )
        fields = {name: value for name, value in form.items() if isinstance(value, str) and name in EDIT_FIELDS}
        body = submission.parse(EditRequest, fields)
        models = edit_models(state.registry.endpoints.values())
        endpoint = models.get(body.model)
        if endpoint is None:
            raise HTTPException(
                404, f"The model '{body.model}' does not edit images; editing models: {', '.join(models)}"
            )
        most = endpoint.max_images
        if len(images) > most:
            several = ", ".join(name for name, target in models.items() if target.max_images > 1)
            message = (
                f"up to {most} images for this model"
                if most > 1
                else f"this model edits one image; {several} take several"
            )
            raise HTTPException(400, submission.one_error(["body", "image"], message, "too_long"))
        image_urls = [await _data_uri(image, state.settings.max_image_bytes) for image in images]
    finally:
        await form.close()
    job = await submission.submit(
        state, request, endpoint_id=endpoint.id, fal_input=body.to_fal(endpoint, image_urls), dialect=OPENAI.id
    )
    if body.stream:
        return _streamed(state, job, "image_edit", body)
    return await _answer(state, request, job.id, owner, int(job.created_at), body.output_format)


async def _data_uri(image: UploadFile, limit: int) -> str:
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the image is larger than {limit} bytes")
    return f"data:application/octet-stream;base64,{base64.b64encode(data).decode()}"


async def _answer(
    state: AppState, request: Request, job_id: str, owner: str, created: int, output_format: str
) -> dict[str, Any]:
    """Wait for the job (cancelled if the caller hangs up), then OpenAI's ImagesResponse, or the
    error it ended with."""
    done = await submission.until_terminal(state, job_id, owner, state.settings.sync_timeout_seconds, request=request)
    if not done.status.is_terminal():
        raise HTTPException(
            504, f"the image is not ready after {state.settings.sync_timeout_seconds:g} s (request {job_id})"
        )
    if not done.succeeded:
        raise HTTPException(done.error_http_status, done.error or "the image could not be made")
    assert done.result is not None
    return render_images_response(done.result, created, output_format)


def _streamed(state: AppState, job: Job, kind: str, body: ImagesRequest) -> StreamingResponse:
    """OpenAI's image stream (`stream: true`): up to `partial_images` previews of the forming image
    as `{kind}.partial_image` events, spread over the run, then one `{kind}.completed` event per image
    (b64_json); an `error` event if the job fails. A caller that hangs up cancels the job."""
    created = int(job.created_at)
    wanted = body.partial_images

    def common(type_: str, size: str) -> dict[str, Any]:
        return {
            "type": f"{kind}.{type_}",
            "created_at": created,
            "size": size,
            "quality": "auto",
            "background": "opaque",
            "output_format": body.output_format,
        }

    async def events() -> AsyncIterator[str]:
        sent = 0
        async with contextlib.aclosing(run_updates(state, job, with_logs=False, with_previews=wanted > 0)) as updates:
            async for update in updates:
                if update is None:
                    yield KEEPALIVE
                elif update.ended:
                    for event in _endings(update.job, common):
                        yield sse(event, event["type"])
                elif _partial_due(update, sent, wanted):
                    assert update.preview is not None
                    image, size = await asyncio.to_thread(_reencoded, update.preview.image, body.output_format)
                    yield sse({**common("partial_image", size), "b64_json": image, "partial_image_index": sent})
                    sent += 1

    return event_stream(events())


def _partial_due(update: JobUpdate, sent: int, wanted: int) -> bool:
    """Whether this update's preview becomes partial image number `sent`: previews are taken once the
    run is (sent + 1) / (wanted + 1) of the way through, so the partial images spread over it."""
    progress = update.job.progress
    if update.preview is None or sent >= wanted or progress is None:
        return False
    return update.preview.step * (wanted + 1) >= (sent + 1) * progress.total


def _endings(job: Job, common: Callable[[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    if not job.succeeded:
        _, error = OPENAI.render_error(job.error_http_status, job.error or "the image could not be made")
        return [{"type": "error", **error}]
    assert job.result is not None
    usage = {
        "input_tokens": 0,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
        "output_tokens": 0,
        "total_tokens": 0,
    }  # no tokens are counted here; the field is required
    return [
        {
            **common("completed", f"{image['width']}x{image['height']}"),
            "b64_json": image["url"].split(",", 1)[1],
            "usage": usage,
        }
        for image in job.result["images"]
    ]


def _reencoded(data_uri: str, output_format: str) -> tuple[str, str]:
    """A preview (a JPEG data URI) as base64 in the requested format, and its size."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))) as preview:
        buffer = io.BytesIO()
        preview.convert("RGB").save(buffer, format=output_format.upper())
        return base64.b64encode(buffer.getvalue()).decode("ascii"), f"{preview.width}x{preview.height}"


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    state = app_state(request)
    state.api_keys.owner(request)
    endpoints = state.registry.endpoints.values()
    names = {**generation_models(endpoints), **edit_models(endpoints)}
    served = [name for name, endpoint in names.items() if endpoint.id in state.endpoints]
    created = int(time.time())
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "hidream-ai"} for name in served],
    }


# Last: what none of the routes above takes under OpenAI's paths (images.create_variation, say) is
# answered in OpenAI's shape.
add_fallbacks(router, "/images/{rest:path}", "/models")
