"""The canonical job: its states and the record every dialect renders from."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class JobStatus(enum.StrEnum):
    """IN_QUEUE -> IN_PROGRESS -> COMPLETED | CANCELLED. A failed job is COMPLETED with an error."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"

    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.CANCELLED)


class ErrorType(enum.StrEnum):
    """Why a job ended without output; rendered as fal's `error_type`."""

    VALIDATION = "validation_error"  # input rejected once the worker saw it (HTTP 422)
    INFERENCE = "internal_error"  # the model raised (HTTP 500)
    WORKER_LOST = "runner_disconnected"  # workers kept dying on this job (HTTP 503)
    CANCELLED = "request_cancelled"  # the caller cancelled it (HTTP 400)


ERROR_HTTP_STATUS = {
    ErrorType.VALIDATION: 422,
    ErrorType.INFERENCE: 500,
    ErrorType.WORKER_LOST: 503,
    ErrorType.CANCELLED: 400,
}


@dataclass(frozen=True)
class LogLine:
    timestamp: float
    level: str
    message: str


@dataclass(frozen=True)
class Progress:
    """A typed progress event from a worker: `step` of `total` steps are done."""

    step: int
    total: int

    def log_line(self) -> str:
        """How the event also reads in the job's log: the `step i/n` line fal's and Replicate's
        clients show (and always have)."""
        return f"step {self.step}/{self.total}"

    def to_json(self) -> dict[str, int]:
        return {"step": self.step, "total": self.total}


@dataclass(frozen=True)
class Preview:
    """The forming image of a running job, as it looked after `step`: a small JPEG data URI."""

    step: int
    image: str


@dataclass(frozen=True)
class JobRequest:
    """What a dialect hands the JobService: an endpoint, validated input and where to call back."""

    endpoint: str
    input: dict[str, Any]
    owner: str = ""
    dialect: str = "fal"
    webhook_url: str | None = None
    base_url: str = ""
    idempotency_key: str | None = None
    client_input: dict[str, Any] | None = None  # the input as the dialect's client sent it, for echoing
    webhook_events: tuple[str, ...] = ()  # progress events wanted besides the terminal one (Replicate)
    # The input before its image inputs were fetched and replaced by stored copies: what a repeat
    # under the same Idempotency-Key is compared on, so that it can be answered before any fetch.
    as_submitted: dict[str, Any] | None = None


@dataclass(frozen=True)
class Job:
    id: str
    endpoint: str
    owner: str
    dialect: str
    status: JobStatus
    input: dict[str, Any]
    webhook_url: str | None
    base_url: str
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    attempts: int = 0
    cancel_requested: bool = False
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: ErrorType | None = None
    error_detail: Any = None
    inference_time: float | None = None
    queue_position: int | None = None
    logs: list[LogLine] = field(default_factory=list)
    client_input: dict[str, Any] | None = None
    webhook_events: tuple[str, ...] = ()
    seq: int = 0
    progress: Progress | None = None  # the last progress event of its run
    preview: Preview | None = None  # its run's latest preview; read only when asked for (kept apart)
    files_expired_at: float | None = None  # when the retention sweep removed its output files

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.COMPLETED and self.error is None

    @property
    def error_http_status(self) -> int:
        return ERROR_HTTP_STATUS[self.error_type or ErrorType.INFERENCE]

    @property
    def webhook_id(self) -> str:
        """Deterministic per job: a job that runs twice still sends one event."""
        return f"msg_{self.id.replace('-', '')}"


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a job; `token` fences writes from a worker whose lease was taken away."""

    job: Job
    token: str
