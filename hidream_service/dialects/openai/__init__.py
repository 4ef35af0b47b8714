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

import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from hidream_service.dialects.base import Dialect, error_message, field_name
from hidream_service.models.base import StrictInput
from hidream_service.models.family import Endpoint, Task
from hidream_service.models.loras import MAX_LORAS, LoraWeight

if TYPE_CHECKING:
    from fastapi import APIRouter

DEFAULT_MODEL = "hidream-i1-full"
DEFAULT_EDIT_MODEL = "hidream-e1-full"
SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")


class OpenAIDialect(Dialect):
    id = "openai"

    def router(self, endpoints: Mapping[str, Endpoint]) -> APIRouter:
        from hidream_service.dialects.openai.routes import router

        return router

    def render_error(self, status: int, detail: Any) -> tuple[int, dict[str, Any]]:
        status = 400 if status == 422 else status  # OpenAI answers a bad input with 400
        param = field_name(detail[0]) if isinstance(detail, list) and detail else None
        kind = "invalid_request_error" if status < 500 else "server_error"
        if status == 401:
            kind = "authentication_error"
        code = "not_found" if status == 404 else "invalid_value" if isinstance(detail, list) and detail else None
        if status == 429:  # as OpenAI's own rate limits answer
            kind, code = "requests", "rate_limit_exceeded"
        return status, {"error": {"message": error_message(detail), "type": kind, "param": param, "code": code}}


OPENAI = OpenAIDialect()


# -- requests -------------------------------------------------------------------------------------


class ImagesRequest(StrictInput):
    """Fields generations and edits share. Beyond OpenAI's, `seed`, `negative_prompt`,
    `num_inference_steps`, `guidance_scale` and `loras` may be sent (extra_body in the openai client;
    in an edit's form, `loras` is a JSON string)."""

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
    # Streaming, as the GPT image models stream: `partial_images` previews of the forming image, then
    # the image itself (always as b64_json).
    stream: bool = False
    partial_images: int = Field(default=0, ge=0, le=3)
    loras: list[LoraWeight] | None = Field(default=None, max_length=MAX_LORAS, description="[{path, scale}]")

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_from_a_form(cls, value: object) -> object:
        if isinstance(value, str):  # a multipart form field holds text: the list as JSON
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError('loras must be a JSON list, e.g. [{"path": "https://...", "scale": 1}]') from None
        return value

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
            "sync_mode": self.response_format == "b64_json" or self.stream,
        }
        if self.size != "auto" and with_size:
            width, height = (int(side) for side in self.size.split("x"))
            fal["image_size"] = {"width": width, "height": height}
        for name in ("seed", "negative_prompt", "num_inference_steps", "guidance_scale"):
            value = getattr(self, name)
            if value is not None:
                fal[name] = value
        if self.loras is not None:
            fal["loras"] = [lora.model_dump(exclude_none=True) for lora in self.loras]
        return fal


class GenerationRequest(ImagesRequest):
    """`POST /v1/images/generations`."""

    model: str = DEFAULT_MODEL
    quality: Literal["auto", "standard"] = "auto"

    def to_fal(self) -> dict[str, Any]:
        return self._fal_common("prompt", with_size=True)


class EditRequest(ImagesRequest):
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
