"""What a process tells the server's metrics about its jobs: small typed reports, pickled from the
workers over the pool's changes queue and handed to the metrics in the server process, so that one
process counts every job of its node (no shared files between processes, nothing to clean up when a
worker dies).

Each report is sent once, when the transition it describes has been written: a start with the lease,
an end with the ending's transaction, a run's measurements after its model call.
"""

from __future__ import annotations

from dataclasses import dataclass

from hidream_service.jobs.model import Job, JobStatus

OK = "ok"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobSubmitted:
    """A new job was queued (a repeat under the same Idempotency-Key is not one)."""

    endpoint: str
    dialect: str


@dataclass(frozen=True)
class JobStarted:
    """A job was leased: how long it waited in the queue."""

    endpoint: str
    dialect: str
    queue_wait_seconds: float


@dataclass(frozen=True)
class JobEnded:
    """A job's ending was written."""

    job_id: str
    endpoint: str
    dialect: str
    outcome: str  # "ok", "cancelled" or the error type (validation_error, internal_error, ...)
    created_at: float
    run_seconds: float | None  # None when it never started
    has_webhook: bool

    @classmethod
    def of(cls, job: Job) -> JobEnded:
        """The report of an ended job (its `completed_at` set)."""
        assert job.completed_at is not None
        if job.status is JobStatus.CANCELLED:
            outcome = CANCELLED
        elif job.error_type is not None:
            outcome = job.error_type.value
        else:
            outcome = OK if job.error is None else "internal_error"
        run = None if job.started_at is None else max(job.completed_at - job.started_at, 0.0)
        return cls(job.id, job.endpoint, job.dialect, outcome, job.created_at, run, job.webhook_url is not None)


@dataclass(frozen=True)
class RunMeasured:
    """One model call in a worker: how many jobs it served and how fast it stepped."""

    endpoint: str
    batch_size: int
    steps_per_second: float | None  # None when the runner reported fewer than two progress events


@dataclass(frozen=True)
class ModelLoaded:
    """A worker loaded a model's weights."""

    model: str
    seconds: float


@dataclass(frozen=True)
class GpuMemory:
    """A CUDA worker's memory after a run of `model`: allocated now, and the peak since it started."""

    worker: str
    model: str
    allocated_bytes: int
    peak_bytes: int


Report = JobSubmitted | JobStarted | JobEnded | RunMeasured | ModelLoaded | GpuMemory
