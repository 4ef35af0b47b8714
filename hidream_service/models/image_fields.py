"""Which inputs of an endpoint take images, read from its input JSON Schema.

fal's convention names them: `image_url`, or another `*_url` / `*_urls` field whose name or
description says it holds an image (`mask_url`, `reference_image_urls`). The catalogue publishes the
result, so the playground's form and `hidream run --image` find image inputs of any endpoint
without knowing it, and a URL field that is not an image (a webhook, say) stays a plain text field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_WORDS = ("image", "mask", "picture", "photo")


@dataclass(frozen=True)
class ImageField:
    name: str
    multiple: bool  # a list of URLs (`*_urls`) rather than one
    required: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "multiple": self.multiple, "required": self.required}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`X | None` appears as anyOf [X, null]: the X part."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [option for option in options if isinstance(option, dict) and option.get("type") != "null"]
        if len(rest) == 1:
            return {**schema, **rest[0]}
    return schema


def _is_string(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string"


def _mentions_an_image(name: str, schema: dict[str, Any]) -> bool:
    text = " ".join(str(schema.get(key, "")) for key in ("title", "description", "contentMediaType"))
    words = f"{name} {text}".lower()
    return any(word in words for word in IMAGE_WORDS)


def image_fields(schema: dict[str, Any]) -> list[ImageField]:
    """The image inputs of an object schema (pydantic's `model_json_schema()`), in schema order."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return []
    required = set(schema.get("required") or ())
    found = []
    for name, raw in properties.items():
        if not isinstance(raw, dict):
            continue
        prop = _without_null(raw)
        items = prop.get("items")
        if name.endswith("_urls") and prop.get("type") == "array" and isinstance(items, dict):
            multiple = True
            holds_urls = _is_string(_without_null(items))
        elif name == "image_url" or name.endswith("_url"):
            multiple = False
            holds_urls = _is_string(prop)
        else:
            continue
        if holds_urls and (name == "image_url" or _mentions_an_image(name, prop)):
            found.append(ImageField(name, multiple, name in required))
    return found
