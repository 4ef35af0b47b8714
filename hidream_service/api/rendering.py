"""What every answer writes the same way, whichever dialect it is in: times, and a job's fal queue URLs."""

from __future__ import annotations

from datetime import UTC, datetime

from hidream_service.jobs.model import Job


def iso(timestamp: float | None) -> str | None:
    """ISO 8601 in UTC with a Z, as the hosted APIs write times."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def iso_offset(timestamp: float | None) -> str | None:
    """ISO 8601 with +00:00, as the webhook views and the secret rotation have always written it."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def app_of(endpoint: str) -> str:
    """The owner/app part of an endpoint id: what fal's request URLs name (never a sub-path)."""
    return "/".join(endpoint.split("/")[:2])


def queue_urls(job: Job) -> dict[str, str]:
    """fal's response, status and cancel URLs of a job, whichever dialect submitted it: the
    service's canonical URLs, which the request view and `hidream run` use too."""
    base = f"{job.base_url}/{app_of(job.endpoint)}/requests/{job.id}"
    return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}
