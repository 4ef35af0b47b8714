"""The seams between the job pipeline and what surrounds it.

    JobService ──► JobStore     SqlJobStore (SQLite on one machine; Postgres for several nodes and Modal)
        │
        ├──hooks──► Executor    WorkerPool wake-ups (one machine) | SpawnExecutor (Modal, Function.spawn)
        │
        └─────────► JobEndings  the webhooks a job's dialect sends (hidream_service/dialects/)

The service decides every state change; a store only persists them, each write a compare-and-set
naming the state (and lease token) it expects. The executor only hears that a job wants running or
stopping; it never changes a job's state itself. The endings render what the job's dialect sends;
the job core knows no dialect.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from hidream_service.jobs.model import Job, JobRequest, JobStatus, LogLine, Preview, Progress
from webhooks.outbox import OutboxMessage


class JobEndings(Protocol):
    """What a job's dialect sends when the job moves: rendered here, stored in the outbox in the
    transaction that makes the move, and sent by the deliverer."""

    def ending(self, job: Job) -> OutboxMessage | None:
        """The webhook of a job that just ended, or None when nobody asked for one."""

    def progress(self, job: Job, event: str, sequence: int) -> OutboxMessage | None:
        """A progress event (`start`, `logs`) the caller asked for, or None: sent once, never retried."""

    def carries_logs(self, job: Job) -> bool:
        """Whether the job's webhooks include its log, so that the ending must read it first."""


class JobStore(Protocol):
    """Persists jobs, their logs and the webhook deliveries their endings produce."""

    def close(self) -> None: ...

    def insert(self, job_id: str, request: JobRequest, request_hash: str, now: float, *, max_queued: int = 0) -> None:
        """Persist a new queued job. Raises DuplicateIdempotencyKey if (owner, key) is taken, and
        QueueFull if the owner already has `max_queued` jobs queued (0: no limit), atomically."""

    def find_by_idempotency_key(self, owner: str, key: str) -> tuple[Job, str] | None:
        """The job holding this key and the fingerprint of the request that created it."""

    def get(
        self, job_id: str, *, with_logs: bool = False, with_preview: bool = False, logs_after: int = 0
    ) -> Job | None:
        """The job with its queue position while queued (jobs that lease before it, in the fair order),
        and its latest preview while running when asked for. With logs, `logs_after` leaves out the
        first lines (those a stream has already given)."""

    def logs(self, job_id: str) -> list[LogLine]: ...

    def page(self, owner: str, dialect: str | None, *, before_seq: int | None, limit: int) -> list[Job]:
        """Newest first: up to `limit` jobs of this owner (and dialect; None: any) submitted before
        `before_seq`."""

    def enqueue_webhook(self, message: OutboxMessage, due_at: float) -> None:
        """A progress event's delivery, outside any state change."""

    def expired_leases(self, now: float) -> list[Job]: ...

    def in_progress(self) -> list[Job]: ...

    def lease_token(self, job_id: str) -> str | None: ...

    def lease_next(self, token: str, now: float, expires_at: float) -> Job | None:
        """Move the next queued job to IN_PROGRESS under a new lease: the oldest of the owner served
        least recently (round robin between owners with queued jobs)."""

    def queued(self, endpoint: str, limit: int) -> list[Job]:
        """The oldest queued jobs of one endpoint, in queue order: candidates to run in one batch."""

    def lease_job(self, job_id: str, token: str, now: float, expires_at: float, *, holder: str) -> Job | None:
        """Move this job to IN_PROGRESS under a new lease: from IN_QUEUE, or from IN_PROGRESS when the
        current lease is `holder`'s own (a re-run of the same call after its container was lost)."""

    def renew_lease(self, job_id: str, token: str, expires_at: float) -> tuple[bool, bool]:
        """Extend a lease. Returns (still ours, cancel requested)."""

    def lease_state(self, job_id: str, token: str) -> tuple[bool, bool]:
        """Read-only: (still leased by this token, cancel requested)."""

    def append_logs(
        self,
        job_id: str,
        lines: Iterable[LogLine],
        progress: Progress | None = None,
        *,
        token: str | None = None,
        preview: Preview | None = None,
    ) -> None:
        """Add log lines and set the job's progress and preview, in one write; the progress and the
        preview only while `token` still holds the job's lease (a run whose lease was taken away
        reports nothing more)."""

    def requeue(self, job_id: str, token: str) -> bool: ...

    def request_cancel(self, job_id: str) -> bool:
        """Flag a running job for cancellation; False unless it is IN_PROGRESS."""

    def finish(
        self,
        job: Job,
        *,
        expected: Sequence[JobStatus],
        token: str | None,
        message: OutboxMessage | None,
        deliver_at: float = 0.0,
        logs: Sequence[LogLine] = (),
    ) -> bool:
        """Write the terminal fields of `job` (its progress too, when it has one) and its webhook
        delivery as one atomic step, only if the stored job is still in one of `expected` (and, with
        a token, still leased by it). `logs`, the run's last lines, are appended either way, as
        `append_logs` would."""


class Executor(Protocol):
    """Gets queued jobs run somewhere: local worker processes, or GPU containers on Modal."""

    def submitted(self, job: Job) -> None:
        """`job` is queued (new, or given back after its worker was lost): see that it runs."""

    def cancel_requested(self, job: Job) -> None:
        """`job` was cancelled while queued or running: stop spending on it."""

    def health(self) -> dict[str, Any]:
        """What /health reports about the executor."""
