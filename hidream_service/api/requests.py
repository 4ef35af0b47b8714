"""The operator's view of the queue: recent requests of every dialect, with their webhook state.

GET /v1/requests[?limit=N&before=REQUEST_ID]   newest first; `next` is the `before` of the next page
GET /v1/requests/{request_id}                  one request: the summary plus its input, result and logs
GET /v1/requests/{request_id}/stream           server-sent events: the summary each time the request
                                               changes, with the log lines added since the last event
                                               and the forming image's latest preview when it is new

Like every other route, a caller sees only the requests its API key made. Deliveries and replays
are at /v1/requests/{id}/webhooks and /v1/webhooks/deliveries/{id}/replay (api/webhooks.py);
cancelling goes through the fal `cancel_url` each summary carries. A running request's `progress`
({step, total}) is its run's last typed progress event: the playground and `hidream run` read it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from hidream_service.api.rendering import iso, queue_urls
from hidream_service.api.state import app_state
from hidream_service.api.streaming import KEEPALIVE, KEEPALIVE_SECONDS, event_stream, job_updates, sse
from hidream_service.api.submission import one_error
from hidream_service.jobs.model import Job, JobStatus, LogLine
from webhooks.outbox import Delivery, DeliveryState

router = APIRouter(tags=["requests"])

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_ID_LENGTH = 100


def _outcome(job: Job) -> str:
    """One word for a person: queued, running, succeeded, failed or cancelled."""
    if job.status is JobStatus.IN_QUEUE:
        return "queued"
    if job.status is JobStatus.IN_PROGRESS:
        return "running"
    if job.status is JobStatus.CANCELLED:
        return "cancelled"
    return "succeeded" if job.succeeded else "failed"


def _seconds(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


def webhook_summary(delivery: Delivery | None) -> dict[str, Any] | None:
    """The request's final webhook: delivered, retrying (an attempt failed, more are due), pending
    (not tried yet) or failed (every attempt failed)."""
    if delivery is None:
        return None
    state = delivery.state.value
    if delivery.state is DeliveryState.PENDING and delivery.attempts > 0:
        state = "retrying"
    return {
        "delivery_id": delivery.id,
        "url": delivery.url,
        "state": state,
        "attempts": delivery.attempts,
        "last_error": delivery.last_error,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.state is DeliveryState.PENDING else None,
    }


def request_summary(job: Job, delivery: Delivery | None) -> dict[str, Any]:
    return {
        "request_id": job.id,
        "endpoint": job.endpoint,
        "dialect": job.dialect,
        "status": job.status.value,
        "outcome": _outcome(job),
        "queue_position": job.queue_position,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "files_expired_at": iso(job.files_expired_at),  # its outputs were removed (HIDREAM_OUTPUT_TTL_HOURS)
        "queue_seconds": _seconds(job.created_at, job.started_at),
        "total_seconds": _seconds(job.created_at, job.completed_at),
        "inference_seconds": job.inference_time,
        "error": None if job.succeeded else job.error,
        "error_type": job.error_type.value if job.error_type else None,
        "images": len(job.result.get("images", [])) if job.result else 0,
        "progress": None if job.progress is None else job.progress.to_json(),
        "webhook": webhook_summary(delivery),
        **queue_urls(job),
    }


def _log_json(line: LogLine) -> dict[str, Any]:
    return {"timestamp": iso(line.timestamp), "level": line.level, "message": line.message}


@router.get("/v1/requests", summary="Recent requests of every dialect, newest first")
async def list_requests(
    request: Request,
    limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
    before: str | None = Query(None, min_length=1, max_length=MAX_ID_LENGTH),
) -> dict[str, Any]:
    state = app_state(request)
    owner = state.api_keys.owner(request)
    before_seq = None
    if before is not None:
        cursor = await state.store_call(state.service.get, before, owner)
        if cursor is None:
            raise HTTPException(422, one_error(["query", "before"], f"no request {before} to list from", "cursor"))
        before_seq = cursor.seq
    jobs = await state.store_call(state.service.store.page, owner, None, before_seq=before_seq, limit=limit + 1)
    page, more = jobs[:limit], len(jobs) > limit
    deliveries = await state.store_call(state.outbox.final_for_subjects, [job.id for job in page])
    return {
        "requests": [request_summary(job, deliveries.get(job.id)) for job in page],
        "next": page[-1].id if more else None,
    }


@router.get("/v1/requests/{request_id}", summary="One request: its state, input, result and logs")
async def get_request(request: Request, request_id: str) -> dict[str, Any]:
    state = app_state(request)
    job = await state.store_call(state.service.get, request_id, state.api_keys.owner(request), with_logs=True)
    if job is None:
        raise HTTPException(404, f"request {request_id} not found")
    delivery = (await state.store_call(state.outbox.final_for_subjects, [job.id])).get(job.id)
    return {
        **request_summary(job, delivery),
        "input": job.input,
        "result": job.result,
        "error_detail": job.error_detail,
        "logs": [_log_json(line) for line in job.logs],
    }


@router.get("/v1/requests/{request_id}/stream", summary="One request's changes as server-sent events")
async def stream_request(request: Request, request_id: str) -> StreamingResponse:
    """Each event is the request's summary with `logs`, the lines added since the previous event
    (all of them in the first), and `preview` ({step, image}: a JPEG data URI) when the running
    request has a new preview of its forming image; the last event is the one where the request has
    ended, and it carries `result` and `error_detail` too. Wakes only when this request changes."""
    state = app_state(request)
    owner = state.api_keys.owner(request)
    if await state.store_call(state.service.get, request_id, owner) is None:
        raise HTTPException(404, f"request {request_id} not found")

    async def events() -> AsyncIterator[str]:
        last_summary = None
        async with contextlib.aclosing(
            job_updates(state, request_id, owner, with_logs=True, with_previews=True, keepalive=KEEPALIVE_SECONDS)
        ) as updates:
            async for update in updates:
                if update is None:
                    yield KEEPALIVE
                    continue
                job = update.job
                delivery = (
                    (await state.store_call(state.outbox.final_for_subjects, [job.id])).get(job.id)
                    if update.ended
                    else None
                )
                summary = request_summary(job, delivery)
                if summary != last_summary or update.new_logs or update.preview is not None:
                    event = {**summary, "logs": [_log_json(line) for line in update.new_logs]}
                    if update.preview is not None:
                        event["preview"] = {"step": update.preview.step, "image": update.preview.image}
                    if update.ended:
                        event.update(result=job.result, error_detail=job.error_detail)
                    yield sse(event)
                    last_summary = summary

    return event_stream(events())
