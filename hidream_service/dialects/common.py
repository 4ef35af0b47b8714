"""Small helpers the dialects share."""

from __future__ import annotations

import json
from typing import Any

from hidream_service.jobs.model import Job
from hidream_service.owners import OPEN
from webhooks.outbox import Delivery


def image_urls(job: Job) -> list[str]:
    if job.result is None:
        return []
    return [image["url"] for image in job.result.get("images", [])]


def nsfw_flags(job: Job) -> list[bool]:
    if job.result is None:
        return []
    return [bool(flag) for flag in job.result.get("has_nsfw_concepts", [])]


def log_text(job: Job) -> str:
    return "".join(f"{line.message}\n" for line in job.logs)


def compact_json(body: Any) -> bytes:
    """A webhook body as sent: compact JSON, rendered once and stored byte for byte."""
    return json.dumps(body, separators=(",", ":")).encode()


def signing_context(job: Job, **more: str) -> str:
    """What a delivery's signer needs besides the body, stored with it: the job's owner, whose
    webhook secret signs it (and what a dialect adds)."""
    return json.dumps({"owner": job.owner, **more})


def owner_of_delivery(delivery: Delivery) -> str:
    """Whose secret signs a delivery. One stored by an earlier release names nobody: it was signed
    with the one secret there was, which is now the open server's."""
    if not delivery.context:
        return OPEN
    return str(json.loads(delivery.context).get("owner", OPEN))
