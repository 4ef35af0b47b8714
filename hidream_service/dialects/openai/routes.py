"""OpenAI's routes (see the package's docstring for the API)."""

from __future__ import annotations

import base64
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.datastructures import UploadFile

from hidream_service.api import submission
from hidream_service.api.bodies import read_form
from hidream_service.api.errors import add_fallbacks, shaped_route
from hidream_service.api.openapi import json_body
from hidream_service.api.state import AppState, app_state
from hidream_service.dialects.openai import (
    OPENAI,
    EditRequest,
    GenerationRequest,
    edit_models,
    generation_models,
    render_images_response,
)

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
}


@router.post("/images/generations", openapi_extra=json_body(GenerationRequest))
async def generations(request: Request) -> dict[str, Any]:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    body = submission.parse(GenerationRequest, await submission.read_json_object(request))
    models = generation_models(state.registry.endpoints.values())
    endpoint = models.get(body.model)
    if endpoint is None:
        raise HTTPException(404, f"The model '{body.model}' does not exist; models here: {', '.join(models)}")
    job = await submission.submit(state, request, endpoint_id=endpoint.id, fal_input=body.to_fal(), dialect=OPENAI.id)
    return await _answer(state, request, job.id, owner, int(job.created_at), body.output_format)


@router.post("/images/edits")
async def edits(request: Request) -> dict[str, Any]:
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
