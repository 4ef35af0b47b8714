"""Image inputs are found in an endpoint's JSON Schema, whatever the endpoint."""

from __future__ import annotations

from pydantic import BaseModel, Field, HttpUrl

from hidream_service.models.image_fields import ImageField, image_fields
from hidream_service.models.registry import DEFAULT_REGISTRY


class EditLikeInput(BaseModel):
    prompt: str
    image_url: str = Field(description="URL of the image to edit.")
    mask_url: HttpUrl | None = None
    reference_image_urls: list[str] = Field(default_factory=list)
    webhook_url: str | None = Field(default=None, description="Where to send the result.")
    image_size: str = "square_hd"
    style_urls: list[str] = Field(default_factory=list, description="Photos whose style to borrow.")
    seed_url: int = 0  # named like an image input, but not a string


def test_image_inputs_are_read_from_names_types_and_descriptions() -> None:
    found = image_fields(EditLikeInput.model_json_schema())

    assert found == [
        ImageField("image_url", multiple=False, required=True),
        ImageField("mask_url", multiple=False, required=False),
        ImageField("reference_image_urls", multiple=True, required=False),
        ImageField("style_urls", multiple=True, required=False),
    ]


def test_a_url_field_that_is_not_an_image_is_left_alone() -> None:
    names = [field.name for field in image_fields(EditLikeInput.model_json_schema())]

    assert "webhook_url" not in names and "image_size" not in names and "seed_url" not in names


def test_every_endpoints_schema_shows_exactly_the_image_inputs_it_fetches() -> None:
    for endpoint in DEFAULT_REGISTRY.endpoints.values():
        found = [field.name for field in image_fields(endpoint.input_model.model_json_schema())]
        assert found == list(endpoint.image_fields), endpoint.id


def test_a_schema_without_properties_has_no_image_inputs() -> None:
    assert image_fields({"type": "object"}) == []
    assert image_fields({"properties": "nonsense"}) == []
