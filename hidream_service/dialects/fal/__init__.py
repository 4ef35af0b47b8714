"""fal's queue protocol at the server root, as the official fal-client needs it.

    POST /{app_id}[?fal_webhook=URL]                     submit -> request_id and the URLs below
    GET  /{owner}/{app}/requests/{id}/status[?logs=1]    202 while queued/running, 200 when done
    GET  /{owner}/{app}/requests/{id}/status/stream      the same as server-sent events
    GET  /{owner}/{app}/requests/{id}                    the result (or the job's error)
    PUT  /{owner}/{app}/requests/{id}/cancel
    POST /run/{app_id}                                   fal's synchronous host: waits, answers the result

Status, result and cancel URLs name only owner/app, never a sub-path (as fal does). Canonical inputs
and outputs are fal's, so this dialect translates nothing. Its webhooks carry Standard Webhooks
headers and fal's Ed25519 ones, so either verifier works. (fal's storage upload routes are in
api/fal_storage.py: every dialect's clients may use the files.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hidream_service.api.rendering import queue_urls
from hidream_service.dialects.base import Dialect
from hidream_service.dialects.common import compact_json, signing_context
from hidream_service.jobs.model import Job, JobStatus, LogLine
from hidream_service.models.family import Endpoint
from hidream_service.owners import OPEN
from hidream_service.signing_keys import SigningKeys
from webhooks.outbox import Delivery, OutboxMessage
from webhooks.signing import fal_sign_headers, sign_headers

if TYPE_CHECKING:
    from fastapi import APIRouter

    from hidream_service.api.streaming import JobUpdate

ANONYMOUS_USER = "anonymous"  # the fal user id of jobs on a server without API keys


SIGNER = "fal"  # Standard Webhooks headers and fal's Ed25519 headers


class FalDialect(Dialect):
    id = "fal"
    signer = SIGNER
    routes_last = True  # its submit route takes any POST path

    def name_of(self, endpoint: Endpoint) -> str | None:
        return endpoint.id  # the canonical name

    def router(self, endpoints: Mapping[str, Endpoint]) -> APIRouter:
        from hidream_service.dialects.fal.routes import router_for

        return router_for(endpoints)

    def ending(self, job: Job, endpoint: Endpoint | None) -> OutboxMessage | None:
        if job.webhook_url is None:
            return None
        context = signing_context(job, request_id=job.id)
        body = compact_json(webhook_body(job))
        return OutboxMessage(job.webhook_id, job.webhook_url, body, SIGNER, context=context, subject=job.id)

    def sign(self, keys: SigningKeys, delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        context = json.loads(delivery.context)
        owner = _owner(context)
        # The user id is opaque: the owner id is a hash of the API key, and the URL is the caller's.
        user_id = ANONYMOUS_USER if owner == OPEN else keys.public_owner_id(owner)
        fal_headers = fal_sign_headers(keys.fal_key, context["request_id"], user_id, timestamp, delivery.body)
        standard = sign_headers(keys.signing_secrets(owner), delivery.id, timestamp, delivery.body)
        return {**standard, **fal_headers}


def _owner(context: Mapping[str, Any]) -> str:
    if "owner" in context:
        return str(context["owner"])
    user_id = str(context.get("user_id", ANONYMOUS_USER))  # an earlier release's: the owner id itself
    return OPEN if user_id == ANONYMOUS_USER else user_id


FAL = FalDialect()


def error_payload(job: Job) -> dict[str, Any]:
    return {"detail": job.error_detail if job.error_detail is not None else job.error}


def webhook_body(job: Job) -> dict[str, Any]:
    """fal's payload: {request_id, gateway_request_id, status: OK|ERROR, payload, error}."""
    if job.succeeded:
        return {
            "request_id": job.id,
            "gateway_request_id": job.id,
            "status": "OK",
            "payload": job.result,
            "error": None,
        }
    return {
        "request_id": job.id,
        "gateway_request_id": job.id,
        "status": "ERROR",
        "payload": error_payload(job),
        "error": job.error,
    }


def log_lines(lines: Iterable[LogLine]) -> list[dict[str, Any]]:
    """Log lines as fal's status objects carry them."""
    return [
        {
            "message": line.message,
            "level": line.level,
            "source": "USER",
            "timestamp": datetime.fromtimestamp(line.timestamp, UTC).isoformat(),
        }
        for line in lines
    ]


def stream_event(update: JobUpdate) -> dict[str, Any]:
    """One event of a streamed run before its end: the status object, its progress, the new log
    lines, and the forming image when there is a new preview of it."""
    job = update.job
    event = {**render_status(job, with_logs=False), "logs": log_lines(update.new_logs)}
    if job.progress is not None:
        event["progress"] = job.progress.to_json()
    if update.preview is not None:
        event["images"] = [
            {"url": update.preview.image, "content_type": "image/jpeg", "preview_step": update.preview.step}
        ]
    return event


def render_status(job: Job, *, with_logs: bool) -> dict[str, Any]:
    """fal's status object. Failed and cancelled jobs are COMPLETED with `error` (fal-client knows
    no other status strings); `logs` is always present, null unless asked for."""
    body: dict[str, Any] = {"request_id": job.id, **queue_urls(job), "logs": log_lines(job.logs) if with_logs else None}
    if job.status is JobStatus.IN_QUEUE:
        body.update(status="IN_QUEUE", queue_position=job.queue_position or 0)
    elif job.status is JobStatus.IN_PROGRESS:
        body.update(status="IN_PROGRESS")
    else:
        body.update(status="COMPLETED", metrics={"inference_time": job.inference_time})
        if not job.succeeded:
            body.update(error=job.error, error_type=job.error_type.value if job.error_type else None)
    return body
