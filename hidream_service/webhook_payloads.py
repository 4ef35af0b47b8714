"""The webhook each dialect's caller receives when a job ends, rendered from the canonical job.

Rendered once, inside the transaction that ends the job, and stored byte for byte in the outbox: every
attempt and every replay sends the same body under the same webhook-id.
"""

from __future__ import annotations

import json
from typing import Any

from hidream_service.dialects import replicate, wavespeed
from hidream_service.jobs.model import Job
from webhooks.outbox import OutboxMessage

FAL_SIGNER = "fal"  # Standard Webhooks headers and fal's Ed25519 headers, so either verifier works
STANDARD_SIGNER = "standard"  # Standard Webhooks headers only (Replicate-style receivers)
WAVESPEED_SIGNER = "wavespeed"  # WaveSpeed's v3 HMAC headers
ANONYMOUS_USER = "anonymous"  # the fal user id of jobs on a server without API keys


def webhook_id(job: Job) -> str:
    """Deterministic per job: a job that runs twice still sends one event."""
    return f"msg_{job.id.replace('-', '')}"


def fal_error_payload(job: Job) -> dict[str, Any]:
    return {"detail": job.error_detail if job.error_detail is not None else job.error}


def fal_webhook_body(job: Job) -> dict[str, Any]:
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
        "payload": fal_error_payload(job),
        "error": job.error,
    }


def _json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def outbox_message(job: Job) -> OutboxMessage | None:
    """The delivery to record for a job that just ended, or None when nobody asked for one."""
    if job.webhook_url is None:
        return None
    if job.dialect == "replicate":
        if "completed" not in job.webhook_events and "output" not in job.webhook_events:
            return None
        body = _json(replicate.render_prediction(job))
        return OutboxMessage(webhook_id(job), job.webhook_url, body, STANDARD_SIGNER, subject=job.id)
    if job.dialect == "wavespeed":
        body = _json(wavespeed.render_data(job))
        return OutboxMessage(webhook_id(job), job.webhook_url, body, WAVESPEED_SIGNER, subject=job.id)
    body = _json(fal_webhook_body(job))
    context = json.dumps({"request_id": job.id, "user_id": job.owner or ANONYMOUS_USER})
    return OutboxMessage(
        id=webhook_id(job), url=job.webhook_url, body=body, signer=FAL_SIGNER, context=context, subject=job.id
    )


def progress_message(job: Job, event: str, sequence: int = 0) -> OutboxMessage | None:
    """A Replicate progress event (start, logs) the caller asked for: sent once, never retried."""
    if job.webhook_url is None or job.dialect != "replicate" or event not in job.webhook_events:
        return None
    return OutboxMessage(
        f"{webhook_id(job)}_{event}{sequence}",
        job.webhook_url,
        _json(replicate.render_prediction(job)),
        STANDARD_SIGNER,
        subject=job.id,
        single_attempt=True,
    )
