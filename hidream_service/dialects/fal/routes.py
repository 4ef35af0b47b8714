"""fal's routes (see the package's docstring for the protocol)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from hidream_service.api import submission
from hidream_service.api.errors import shaped_route
from hidream_service.api.openapi import json_body
from hidream_service.api.rendering import app_of
from hidream_service.api.state import AppState, app_state
from hidream_service.api.streaming import KEEPALIVE, KEEPALIVE_SECONDS, event_stream, job_updates, run_updates, sse
from hidream_service.api.submission import one_error, read_json_object, until_terminal
from hidream_service.dialects.fal import FAL, error_payload, log_lines, render_status, stream_event
from hidream_service.jobs.model import Job
from hidream_service.jobs.service import CancelOutcome
from hidream_service.models.family import Endpoint

TRUE_WORDS = {"1", "true", "yes"}
FALSE_WORDS = {"0", "false", "no", ""}

FalRoute = shaped_route(FAL.render_error)
_requests = APIRouter(route_class=FalRoute)
_catch_all = APIRouter(route_class=FalRoute)


def router_for(endpoints: Mapping[str, Endpoint]) -> APIRouter:
    """fal's routes: documented ones for each served endpoint, then the request routes, then the
    catch-alls (last: the submit route takes any POST path)."""
    router = APIRouter(route_class=FalRoute)
    for endpoint in endpoints.values():
        _add_endpoint_routes(router, endpoint)
    router.include_router(_requests)
    router.include_router(_catch_all)
    return router


def _json(body: Any, status_code: int = 200, request_id: str | None = None) -> JSONResponse:
    headers = {"X-Fal-Request-Id": request_id} if request_id else None
    return JSONResponse(body, status_code=status_code, headers=headers)


def _error_body(job: Job) -> dict[str, Any]:
    return {**error_payload(job), "error_type": job.error_type.value if job.error_type else None}


def _result_response(job: Job) -> JSONResponse:
    if job.succeeded:
        return _json(job.result, 200, job.id)
    response = _json(_error_body(job), job.error_http_status, job.id)
    if job.error_type is not None:
        response.headers["X-Fal-Error-Type"] = job.error_type.value
    return response


def _parse_flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise HTTPException(422, one_error(["query", name], "must be one of 1, 0, true, false", "bool_parsing"))


async def _owned_job(state: AppState, request: Request, owner: str, app: str, request_id: str, logs: bool) -> Job:
    caller = state.api_keys.owner(request)
    job = await state.store_call(state.service.get, request_id, caller, with_logs=logs)
    if job is None or app_of(job.endpoint) != f"{owner}/{app}":
        raise HTTPException(404, f"request {request_id} not found")
    return job


@_requests.get("/{owner}/{app}/requests/{request_id}/status")
async def status(request: Request, owner: str, app: str, request_id: str, logs: str | None = Query(None)) -> Any:
    state = app_state(request)
    with_logs = _parse_flag(logs, "logs")
    job = await _owned_job(state, request, owner, app, request_id, with_logs)
    body = render_status(job, with_logs=with_logs)
    return _json(body, 200 if job.status.is_terminal() else 202, job.id)


@_requests.get("/{owner}/{app}/requests/{request_id}/status/stream")
async def status_stream(
    request: Request, owner: str, app: str, request_id: str, logs: str | None = Query(None)
) -> StreamingResponse:
    """Status objects as server-sent events, the last one COMPLETED. With logs, each event's `logs`
    holds only the lines new since the previous event: fal's JS client appends them."""
    state = app_state(request)
    with_logs = _parse_flag(logs, "logs")
    await _owned_job(state, request, owner, app, request_id, False)  # 404 before the stream starts
    caller = state.api_keys.owner(request)

    async def events() -> AsyncIterator[str]:
        last_sent = None
        async with contextlib.aclosing(
            job_updates(
                state, request_id, caller, with_logs=with_logs, with_previews=False, keepalive=KEEPALIVE_SECONDS
            )
        ) as updates:
            async for update in updates:
                if update is None:
                    yield KEEPALIVE
                    continue
                body = {**render_status(update.job, with_logs=False), "logs": None}
                if with_logs:
                    body["logs"] = log_lines(update.new_logs)
                if body != last_sent:
                    yield sse(body)
                    last_sent = body

    return event_stream(events(), {"X-Fal-Request-Id": request_id})


@_requests.get("/{owner}/{app}/requests/{request_id}")
async def result(request: Request, owner: str, app: str, request_id: str) -> Any:
    state = app_state(request)
    job = await _owned_job(state, request, owner, app, request_id, False)
    if not job.status.is_terminal():
        return _json({"detail": "Request is still in progress"}, 400, job.id)
    return _result_response(job)


@_requests.put("/{owner}/{app}/requests/{request_id}/cancel")
async def cancel(request: Request, owner: str, app: str, request_id: str) -> Any:
    state = app_state(request)
    job = await _owned_job(state, request, owner, app, request_id, False)
    outcome = await state.store_call(state.service.cancel, job.id, job.owner)
    if outcome is CancelOutcome.ALREADY_COMPLETED:
        return _json({"status": "ALREADY_COMPLETED", "detail": "Request already completed"}, 400, job.id)
    if outcome is CancelOutcome.NOT_FOUND:
        return _json({"status": "NOT_FOUND", "detail": f"request {request_id} not found"}, 404, job.id)
    return _json({"status": "CANCELLATION_REQUESTED"}, 202, job.id)


def _add_endpoint_routes(router: APIRouter, endpoint: Endpoint) -> None:
    """Documented routes for one served endpoint (the catch-alls below answer the same paths)."""

    async def submit_to_endpoint(request: Request, fal_webhook: str | None = Query(None)) -> Any:
        return await submit(request, endpoint.id, fal_webhook)

    async def run_endpoint(request: Request) -> Any:
        return await run(request, endpoint.id)

    body = json_body(endpoint.input_model)
    router.add_api_route(
        f"/{endpoint.id}", submit_to_endpoint, methods=["POST"], openapi_extra=body, tags=["fal queue"],
        summary=f"Queue a {endpoint.title} request", operation_id=f"fal_submit_{endpoint.id}",
    )  # fmt: skip
    router.add_api_route(
        f"/run/{endpoint.id}", run_endpoint, methods=["POST"], openapi_extra=body, tags=["fal sync"],
        summary=f"Run {endpoint.title} and answer with the result", operation_id=f"fal_run_{endpoint.id}",
    )  # fmt: skip


# Decorators register bottom-up: the /run/ path must be matched first.
@_catch_all.post("/{endpoint_path:path}/stream", include_in_schema=False)
@_catch_all.post("/run/{endpoint_path:path}/stream", include_in_schema=False)
async def stream(request: Request, endpoint_path: str) -> Any:
    """fal's streaming call (`fal.stream`, `fal_client.stream`): the run as server-sent events, one per
    change, the last one being the result (what the clients' `done()` answers). Until then each event
    is a status object with `progress` {step, total}, the new log lines in `logs`, and, when a new
    preview of the forming image exists, `images` holding it as a JPEG data URI. A failed run's last
    event is its error ({detail, error_type}). A caller that hangs up cancels the run, as on fal."""
    state = app_state(request)
    job = await _submit(state, request, endpoint_path, None)

    async def events() -> AsyncIterator[str]:
        async with contextlib.aclosing(run_updates(state, job, with_logs=True, with_previews=True)) as updates:
            async for update in updates:
                if update is None:
                    yield KEEPALIVE
                elif update.ended:
                    yield sse(update.job.result if update.job.succeeded else _error_body(update.job))
                else:
                    yield sse(stream_event(update))

    return event_stream(events(), {"X-Fal-Request-Id": job.id})


@_catch_all.get("/{path:path}", include_in_schema=False)
async def no_such_path(path: str) -> Any:
    """A GET that no route takes: 404, not the 405 that the submit catch-all's path would earn."""
    raise HTTPException(404, f"no such path: /{path}")


@_catch_all.post("/run/{endpoint_path:path}", include_in_schema=False)
async def run(request: Request, endpoint_path: str) -> Any:
    """fal's synchronous host (`fal.run`): the result in the response, no queue handle. As on fal, a
    caller that hangs up cancels its request."""
    state = app_state(request)
    job = await _submit(state, request, endpoint_path, None)
    done = await until_terminal(state, job.id, job.owner, state.settings.sync_timeout_seconds, request=request)
    if not done.status.is_terminal():
        return _json({"detail": "Request timed out", "error_type": "request_timeout"}, 504, job.id)
    return _result_response(done)


@_catch_all.post("/{endpoint_path:path}", include_in_schema=False)
async def submit(request: Request, endpoint_path: str, fal_webhook: str | None = Query(None)) -> Any:
    state = app_state(request)
    job = await _submit(state, request, endpoint_path, fal_webhook)
    body = render_status(job, with_logs=False)
    body.pop("logs")
    body.setdefault("queue_position", 0)
    body["gateway_request_id"] = job.id
    return _json(body, 200, job.id)


async def _submit(state: AppState, request: Request, endpoint_path: str, webhook: str | None) -> Job:
    state.api_keys.owner(request)  # 401 before anything else
    endpoint_id = endpoint_path.strip("/")
    if endpoint_id not in state.endpoints:
        served = ", ".join(sorted(state.endpoints))
        raise HTTPException(404, f"application '{endpoint_path}' not found; this server serves: {served}")
    payload = await read_json_object(request)
    return await submission.submit(
        state,
        request,
        endpoint_id=endpoint_id,
        fal_input=payload,
        dialect=FAL.id,
        webhook_url=webhook,
        webhook_field=("query", "fal_webhook"),
    )
