"""The endpoint registry: every app id the service answers to, and how to run it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from hidream_service.inference.hidream_o1.recipes import O1, O1_DEV
from hidream_service.models import hidream_e1, hidream_i1, hidream_o1
from hidream_service.models.base import StrictInput
from hidream_service.models.image_fields import image_fields
from hidream_service.models.noop import NoopInput

NOOP = "hidream/noop"


@dataclass(frozen=True)
class Endpoint:
    id: str  # the fal app id
    title: str
    input_model: type[StrictInput]
    family: str  # "noop" | "hidream-i1" | "hidream-i1-image-to-image" | "hidream-e1" | "hidream-o1" | "hidream-o1-edit"
    variant: str | None = None  # the model key the weights layout serves: full, dev, fast, e1-full, e1-1, o1, o1-dev

    @functools.cached_property
    def image_fields(self) -> tuple[str, ...]:
        """Inputs holding image URLs, fetched and checked at submit: read from the input schema, as
        the catalogue publishes them, so that the two cannot disagree."""
        return tuple(field.name for field in image_fields(self.input_model.model_json_schema()))

    @property
    def needs_weights(self) -> bool:
        return self.family != "noop"

    def image_shape_problem(self, width: int, height: int, job_input: dict[str, Any]) -> str | None:
        """Why an image input of this size cannot be used by this job, or None. HiDream renders at most
        128 patches a side, so nothing more elongated than MAX_ASPECT_RATIO; image-to-image with an
        explicit image_size covers and crops the source to that size, so there any shape will do."""
        problem = hidream_i1.too_elongated(width, height, "the image")
        if problem is None:
            return None
        if self.family == "hidream-i1-image-to-image":
            return None if job_input.get("image_size") is not None else f"{problem}; crop it first or give image_size"
        return f"{problem}; crop it first"


ENDPOINTS: dict[str, Endpoint] = {
    endpoint.id: endpoint
    for endpoint in [
        Endpoint(NOOP, "No model: the job lifecycle only", NoopInput, "noop"),
        Endpoint("fal-ai/hidream-i1-full", "HiDream-I1 Full", hidream_i1.HiDreamI1FullInput, "hidream-i1", "full"),
        Endpoint("fal-ai/hidream-i1-dev", "HiDream-I1 Dev", hidream_i1.HiDreamI1DevInput, "hidream-i1", "dev"),
        Endpoint("fal-ai/hidream-i1-fast", "HiDream-I1 Fast", hidream_i1.HiDreamI1FastInput, "hidream-i1", "fast"),
        Endpoint(
            "fal-ai/hidream-i1-full/image-to-image",
            "HiDream-I1 Full image-to-image",
            hidream_i1.HiDreamI1ImageToImageInput,
            "hidream-i1-image-to-image",
            "full",
        ),
        Endpoint(
            "fal-ai/hidream-e1-full",
            "HiDream-E1 Full instruction editing",
            hidream_e1.HiDreamE1FullInput,
            "hidream-e1",
            hidream_e1.E1_FULL,
        ),
        Endpoint(
            "fal-ai/hidream-e1-1",
            "HiDream-E1.1 instruction editing",
            hidream_e1.HiDreamE1_1Input,
            "hidream-e1",
            hidream_e1.E1_1,
        ),
        Endpoint("fal-ai/hidream-o1-image", "HiDream-O1-Image", hidream_o1.HiDreamO1Input, "hidream-o1", O1),
        Endpoint(
            "fal-ai/hidream-o1-image/edit",
            "HiDream-O1-Image editing and personalization",
            hidream_o1.HiDreamO1EditInput,
            "hidream-o1-edit",
            O1,
        ),
        Endpoint(
            "fal-ai/hidream-o1-image/dev", "HiDream-O1-Image Dev", hidream_o1.HiDreamO1DevInput, "hidream-o1", O1_DEV
        ),
        Endpoint(
            "fal-ai/hidream-o1-image/dev/edit",
            "HiDream-O1-Image Dev editing and personalization",
            hidream_o1.HiDreamO1DevEditInput,
            "hidream-o1-edit",
            O1_DEV,
        ),
    ]
}


def served_endpoints(available_variants: set[str]) -> dict[str, Endpoint]:
    """The endpoints this server answers: noop, plus those whose weights it has."""
    return {
        endpoint_id: endpoint
        for endpoint_id, endpoint in ENDPOINTS.items()
        if not endpoint.needs_weights or endpoint.variant in available_variants
    }
