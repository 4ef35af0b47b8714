"""GET /metrics: the node's Prometheus metrics (hidream_service/metrics.py), on the API's own port.

On the API port rather than a port of its own: one listener to expose and protect. With API keys
set it takes an admin key (Prometheus sends one with `authorization: {credentials: ...}`, as a
Bearer token); without keys the server is open on loopback, and so is this.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from hidream_service.api.state import app_state
from hidream_service.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state = app_state(request)
    state.api_keys.admin(request)
    if state.metrics is None:
        raise HTTPException(404, "this server collects no metrics")
    # Rendering reads the backlog from the store: off the event loop, like every store call.
    return Response(await state.store_call(state.metrics.render), media_type=CONTENT_TYPE)
