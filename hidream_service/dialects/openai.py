"""OpenAI Images: model names, the generations request, the ImagesResponse."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from hidream_service.models.base import StrictInput
from hidream_service.models.registry import ENDPOINTS

MODELS = {
    "hidream-i1-full": "fal-ai/hidream-i1-full",
    "hidream-i1-dev": "fal-ai/hidream-i1-dev",
    "hidream-i1-fast": "fal-ai/hidream-i1-fast",
    "hidream-o1-image": "fal-ai/hidream-o1-image",
    "hidream-o1-image-dev": "fal-ai/hidream-o1-image/dev",
}
#: /v1/images/edits: E1 instruction editing, I1 image-to-image under the I1 name, O1 editing and
#: personalization under the O1 names.
EDIT_MODELS = {
    "hidream-e1-full": "fal-ai/hidream-e1-full",
    "hidream-e1-1": "fal-ai/hidream-e1-1",
    "hidream-i1-full": "fal-ai/hidream-i1-full/image-to-image",
    "hidream-o1-image": "fal-ai/hidream-o1-image/edit",
    "hidream-o1-image-dev": "fal-ai/hidream-o1-image/dev/edit",
}
#: Edit endpoints that take several images (`image[]`): one is edited, several are subjects.
SEVERAL_IMAGES = frozenset(endpoint.id for endpoint in ENDPOINTS.values() if endpoint.family == "hidream-o1-edit")
DEFAULT_MODEL = "hidream-i1-full"
DEFAULT_EDIT_MODEL = "hidream-e1-full"
SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")


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

    def to_fal(self, endpoint: str, image_urls: list[str]) -> dict[str, Any]:
        """The fal input of the editing endpoint: the prompt is E1's instruction, I1's and O1's prompt."""
        editing = ENDPOINTS[endpoint].family == "hidream-e1"
        # E1 keeps the source's aspect ratio, so it takes no size.
        fal = self._fal_common("edit_instruction" if editing else "prompt", with_size=not editing)
        if endpoint in SEVERAL_IMAGES:
            fal["reference_image_urls"] = image_urls
            # "auto" with one image: the image's own aspect ratio, as an edit would be expected to keep.
            fal["keep_original_aspect"] = self.size == "auto" and len(image_urls) == 1
        else:
            fal["image_url"] = image_urls[0]
        return fal


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
