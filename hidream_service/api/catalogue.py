"""GET /models: every endpoint this server serves, its name in each dialect, its input schema and defaults,
and which of its inputs take images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from hidream_service.api.state import app_state
from hidream_service.models.image_fields import image_fields

router = APIRouter()


@router.get("/models")
async def catalogue(request: Request) -> dict[str, Any]:
    state = app_state(request)
    models = []
    for endpoint in sorted(state.endpoints.values(), key=lambda e: e.id):
        schema = endpoint.input_model.model_json_schema()
        defaults = {
            name: field.default
            for name, field in endpoint.input_model.model_fields.items()
            if not field.is_required() and field.default_factory is None
        }
        models.append(
            {
                "id": endpoint.id,
                "title": endpoint.title,
                "names": {dialect.id: dialect.name_of(endpoint) for dialect in state.dialects},
                "input_schema": schema,
                "defaults": {name: getattr(value, "value", value) for name, value in defaults.items()},
                "image_fields": [field.to_json() for field in image_fields(schema)],
            }
        )
    return {"models": models}
