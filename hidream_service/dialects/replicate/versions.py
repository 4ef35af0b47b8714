"""Replicate's models and their versions, for the models this server serves.

Each model has one version: the inputs Replicate's clients send it and the output they get back,
published as Cog publishes them (an OpenAPI document whose components hold `Input` and `Output`).
A version is named by its content: the id is the SHA-256 of the model's name and those two schemas.
So it is the same in every process, survives restarts, and changes exactly when the inputs do; a
caller who pinned `owner/name:<id>` keeps running what they pinned, and after an upgrade that
changed the inputs gets a clean "no such version" instead of a run with other inputs.

Wherever a version is asked for, a reference may be a version id, `owner/name` (the model's version
now) or `owner/name:<id>`; `find_version` resolves all three, so that what a prediction accepts and
what the clients then look up (`replicate.run("owner/name:id")` fetches the version after creating
the prediction) can never disagree.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hidream_service.api.openapi import inline_schema
from hidream_service.dialects.replicate import input_model
from hidream_service.models.family import Endpoint

#: A content-addressed version has no moment of creation of its own; the clients require one, so
#: every version gives the day versions began to be named this way (the same in every process).
VERSIONS_SINCE = datetime(2026, 12, 1, tzinfo=UTC)
#: Not a Cog model: this names what serves it. Not a version number either, so that the clients'
#: rule for old Cog versions (an array output taken for an iterator) never applies.
SERVED_BY = "hidream-service"

#: What every model answers: a list of image URLs, all at once (not Cog's `iterator` array type,
#: with which the clients' run() would hand back a generator).
OUTPUT_SCHEMA: dict[str, Any] = {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}


@dataclass(frozen=True)
class ModelVersion:
    model: str  # owner/name
    endpoint: Endpoint
    id: str
    openapi_schema: dict[str, Any]

    @property
    def owner(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.model.split("/", 1)[1]


@functools.cache
def version_of(model: str, endpoint: Endpoint) -> ModelVersion:
    """The version a model serves now."""
    schemas = {"Input": {**inline_schema(input_model(endpoint)), "title": "Input"}, "Output": OUTPUT_SCHEMA}
    canonical = json.dumps({"model": model, "schemas": schemas}, sort_keys=True, separators=(",", ":"))
    openapi = {
        "openapi": "3.0.2",
        "info": {"title": endpoint.title, "version": "1.0.0"},
        "paths": {},
        "components": {"schemas": schemas},
    }
    return ModelVersion(model, endpoint, hashlib.sha256(canonical.encode()).hexdigest(), openapi)


def find_version(models: Mapping[str, Endpoint], reference: str) -> ModelVersion | None:
    """The version a reference names (a version id, `owner/name` or `owner/name:<id>`), or None."""
    model, _, version_id = reference.partition(":")
    if "/" not in model:  # a bare version id
        model, version_id = "", reference
    candidates = [model] if model else list(models)
    for name in candidates:
        endpoint = models.get(name)
        if endpoint is None:
            continue
        version = version_of(name, endpoint)
        if not version_id or version.id == version_id:
            return version
    return None


def render_version(version: ModelVersion) -> dict[str, Any]:
    """A version object as the clients parse it (id, created_at, cog_version, openapi_schema)."""
    return {
        "id": version.id,
        "created_at": VERSIONS_SINCE.isoformat().replace("+00:00", "Z"),
        "cog_version": SERVED_BY,
        "openapi_schema": version.openapi_schema,
    }


def render_model(version: ModelVersion, base_url: str) -> dict[str, Any]:
    """A model object as the clients parse it, its `latest_version` the version it serves."""
    return {
        "url": f"{base_url}/v1/models/{version.model}",
        "owner": version.owner,
        "name": version.name,
        "description": version.endpoint.title,
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "run_count": 0,  # not counted here; the clients require the field
        "cover_image_url": None,
        "default_example": None,
        "latest_version": render_version(version),
    }
