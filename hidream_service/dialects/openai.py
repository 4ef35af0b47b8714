"""OpenAI's Images API, as the official `openai` client uses it (base_url = ".../v1").

    POST /v1/images/generations    JSON; waits for the job and answers {created, data: [{url | b64_json}]}
    POST /v1/images/edits          multipart (`image` or repeated `image[]`; several only where the
                                   model takes several; no `mask`)
    GET  /v1/models                the models, OpenAI-style

Synchronous, as OpenAI is; a job that outlasts HIDREAM_SYNC_TIMEOUT_SECONDS is a 504 that names the
request id, whose result stays available through the fal queue API. No webhooks. Errors are
{"error": {message, type, param, code}}, with 400 for bad input.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import Field, field_validator
from starlette.datastructures import UploadFile

from hidream_service.api import submission
from hidream_service.api.errors import shaped_route
from hidream_service.api.openapi import json_body
from hidream_service.api.state import AppState, app_state
from hidream_service.dialects.base import Dialect, error_message, field_name
from hidream_service.models.base import StrictInput
from hidream_service.models.family import Endpoint, Task

DEFAULT_MODEL = "hidream-i1-full"
DEFAULT_EDIT_MODEL = "hidream-e1-full"
SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")


class OpenAIDialect(Dialect):
    id = "openai"

    def router(self, endpoints: Mapping[str, Endpoint]) -> APIRouter:
        return _router

    def render_error(self, status: int, detail: Any) -> tuple[int, dict[str, Any]]:
        status = 400 if status == 422 else status  # OpenAI answers a bad input with 400
        param = field_name(detail[0]) if isinstance(detail, list) and detail else None
        kind = "invalid_request_error" if status < 500 else "server_error"
        if status == 401:
            kind = "authentication_error"
        code = "not_found" if status == 404 else "invalid_value" if isinstance(detail, list) and detail else None
        return status, {"error": {"message": error_message(detail), "type": kind, "param": param, "code": code}}


OPENAI = OpenAIDialect()
_router = APIRouter(prefix="/v1", route_class=shaped_route(OPENAI.render_error))


# -- requests -------------------------------------------------------------------------------------


class _ImagesRequest(StrictInput):
    """Fields generations and edits share. Beyond OpenAI's, `seed`, `negative_prompt`,
    `num_inference_steps` and `guidance_scale` may be sent (extra_body in the openai client)."""

    prompt: str = Field(min_length=1, max_length=10_000)
    n: int = Field(default=1, ge=1, le=4)
    size: str = "auto"
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    user: str | None = Field(default=None, max_length=256)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    negative_prompt: str | None = Field(default=None, max_length=10_000)
    num_inference_steps: int | None = Field(default=None, ge=1, le=50)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=20.0)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if value != "auto" and SIZE.match(value) is None:
            raise ValueError('size must be "auto" or "WIDTHxHEIGHT", e.g. "1024x1024"')
        return value

    def _fal_common(self, prompt_field: str, *, with_size: bool) -> dict[str, Any]:
        fal: dict[str, Any] = {
            prompt_field: self.prompt,
            "num_images": self.n,
            "output_format": self.output_format,
            "sync_mode": self.response_format == "b64_json",
        }
        if self.size != "auto" and with_size:
            width, height = (int(side) for side in self.size.split("x"))
            fal["image_size"] = {"width": width, "height": height}
        for name in ("seed", "negative_prompt", "num_inference_steps", "guidance_scale"):
            value = getattr(self, name)
            if value is not None:
                fal[name] = value
        return fal


class GenerationRequest(_ImagesRequest):
    """`POST /v1/images/generations`."""

    model: str = DEFAULT_MODEL
    quality: Literal["auto", "standard"] = "auto"

    def to_fal(self) -> dict[str, Any]:
        return self._fal_common("prompt", with_size=True)


class EditRequest(_ImagesRequest):
    """`POST /v1/images/edits` form fields besides the images."""

    model: str = DEFAULT_EDIT_MODEL

    def to_fal(self, endpoint: Endpoint, image_urls: list[str]) -> dict[str, Any]:
        """The fal input of the editing endpoint, by its task: the prompt is an instruction edit's
        `edit_instruction`, any other's `prompt`."""
        instruction = endpoint.task is Task.INSTRUCTION_EDIT
        # An instruction edit keeps the source's aspect ratio, so it takes no size.
        fal = self._fal_common("edit_instruction" if instruction else "prompt", with_size=not instruction)
        if endpoint.task is Task.REFERENCE_EDIT:
            fal["reference_image_urls"] = image_urls
            # "auto" with one image: the image's own aspect ratio, as an edit would be expected to keep.
            fal["keep_original_aspect"] = self.size == "auto" and len(image_urls) == 1
        else:
            fal["image_url"] = image_urls[0]
        return fal


def generation_models(endpoints: Iterable[Endpoint]) -> dict[str, Endpoint]:
    """`model` of /v1/images/generations -> its endpoint: the text-to-image endpoints OpenAI lists."""
    return OPENAI.models(endpoint for endpoint in endpoints if endpoint.task is Task.TEXT_TO_IMAGE)


def edit_models(endpoints: Iterable[Endpoint]) -> dict[str, Endpoint]:
    """`model` of /v1/images/edits -> its endpoint: instruction editing, image-to-image under the
    model's generation name, and editing or personalization with several images."""
    return OPENAI.models(endpoint for endpoint in endpoints if endpoint.task.takes_images)


def render_images_response(result: dict[str, Any], created: int, output_format: str) -> dict[str, Any]:
    data = []
    for image in result["images"]:
        url: str = image["url"]
        if url.startswith("data:"):
            data.append({"b64_json": url.split(",", 1)[1]})
        else:
            data.append({"url": url})
    first = result["images"][0]
    return {
        "created": created,
        "data": data,
        "output_format": output_format,
        "size": f"{first['width']}x{first['height']}",
    }


# -- routes ---------------------------------------------------------------------------------------

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


@_router.post("/images/generations", openapi_extra=json_body(GenerationRequest))
async def generations(request: Request) -> dict[str, Any]:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    body = submission.parse(GenerationRequest, await submission.read_json_object(request))
    models = generation_models(state.registry.endpoints.values())
    endpoint = models.get(body.model)
    if endpoint is None:
        raise HTTPException(404, f"The model '{body.model}' does not exist; models here: {', '.join(models)}")
    job = await submission.submit(state, request, endpoint_id=endpoint.id, fal_input=body.to_fal(), dialect=OPENAI.id)
    return await _answer(state, job.id, owner, int(job.created_at), body.output_format)


@_router.post("/images/edits")
async def edits(request: Request) -> dict[str, Any]:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    # Refuse an oversized body before the form parser spools it all to disk.
    most_images = max((endpoint.max_images for endpoint in state.endpoints.values()), default=1)
    limit = most_images * state.settings.max_image_bytes + (1 << 20)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body is larger than {limit} bytes")
    form = await request.form()
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
    return await _answer(state, job.id, owner, int(job.created_at), body.output_format)


async def _data_uri(image: UploadFile, limit: int) -> str:
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the image is larger than {limit} bytes")
    return f"data:application/octet-stream;base64,{base64.b64encode(data).decode()}"


async def _answer(state: AppState, job_id: str, owner: str, created: int, output_format: str) -> dict[str, Any]:
    """Wait for the job, then OpenAI's ImagesResponse, or the error it ended with."""
    done = await submission.until_terminal(state, job_id, owner, state.settings.sync_timeout_seconds)
    if not done.status.is_terminal():
        raise HTTPException(
            504, f"the image is not ready after {state.settings.sync_timeout_seconds:g} s (request {job_id})"
        )
    if not done.succeeded:
        raise HTTPException(done.error_http_status, done.error or "the image could not be made")
    assert done.result is not None
    return render_images_response(done.result, created, output_format)


@_router.get("/models")
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
