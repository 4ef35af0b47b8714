"""The webhook each dialect's caller receives when a job ends, rendered from the canonical job.

Rendered once, inside the transaction that ends the job, and stored byte for byte in the outbox: every
attempt and every replay sends the same body under the same webhook-id.
"""

from __future__ import annotations

import json
from typing import Any

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


def outbox_message(job: Job) -> OutboxMessage | None:
    """The delivery to record for a job that just ended, or None when nobody asked for one."""
    if job.webhook_url is None:
        return None
    body = json.dumps(fal_webhook_body(job), separators=(",", ":")).encode()
    context = json.dumps({"request_id": job.id, "user_id": job.owner or ANONYMOUS_USER})
    return OutboxMessage(
        id=webhook_id(job), url=job.webhook_url, body=body, signer=FAL_SIGNER, context=context, subject=job.id
    )
