"""Small helpers the dialects share."""

from __future__ import annotations

import json
from typing import Any

from hidream_service.jobs.model import Job


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
