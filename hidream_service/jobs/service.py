"""JobService: the only code that moves a job between states.

    submit ──► IN_QUEUE ──lease──► IN_PROGRESS ──► COMPLETED (result, or error)
                  │   ▲                 │  │
                  │   └──lease expired──┘  └──cancel seen by the worker──► CANCELLED
                  ├──cancel──────────────────────────────────────────────► CANCELLED
                  └──could not be started (fail_unstarted)────────────────► COMPLETED (error)

Every terminal transition writes the job's webhook delivery in the same atomic step; what that
webhook says is the job's dialect's business (`JobEndings`, given by whoever builds the service).
Every process (the API and each worker; on Modal, each web, GPU and CPU container) builds its own
JobService over the one shared store: SQLite on one machine, Postgres for several nodes, modal.Dict
on Modal.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from hidream_service.config import Settings
from hidream_service.jobs.model import ErrorType, Job, JobRequest, JobStatus, Lease, LogLine, Preview, Progress
from hidream_service.jobs.protocols import JobEndings, JobStore
from hidream_service.jobs.reports import JobEnded, JobStarted, JobSubmitted, Report
from hidream_service.jobs.store import DuplicateIdempotencyKey

log = logging.getLogger(__name__)

CANCELLED_MESSAGE = "Request was cancelled"
LOGS_EVENT_INTERVAL_SECONDS = 0.5  # Replicate's limit for logs events, and a sane one for any other


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was already used for a different request."""


class CancelOutcome(enum.StrEnum):
    CANCELLED = "CANCELLED"  # was queued: it will never run
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"  # running: stops at the next step
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


def request_fingerprint(request: JobRequest) -> str:
    canonical = json.dumps(
        {
            "endpoint": request.endpoint,
            "input": request.input if request.as_submitted is None else request.as_submitted,
            "webhook_url": request.webhook_url,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobService:
    def __init__(
        self,
        store: JobStore,
        *,
        endings: JobEndings,
        lease_seconds: float = 30.0,
        max_attempts: int = 3,
        max_queued_per_owner: int = 0,
        webhook_first_delay: Callable[[], float] = lambda: 0.0,
        on_submitted: Callable[[Job], None] = lambda job: None,
        on_changed: Callable[[str], None] = lambda job_id: None,
        on_queue_moved: Callable[[], None] = lambda: None,
        on_cancel_requested: Callable[[Job], None] = lambda job: None,
        on_delivery_due: Callable[[], None] = lambda: None,
        on_report: Callable[[Report], None] = lambda report: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._endings = endings
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.max_queued_per_owner = max_queued_per_owner  # 0: no limit
        self._webhook_first_delay = webhook_first_delay
        self._on_submitted = on_submitted
        self._on_changed = on_changed
        self._on_queue_moved = on_queue_moved  # a job left the queue, or came back: places changed
        self._on_cancel_requested = on_cancel_requested
        # A webhook delivery was enqueued: wake the sender. Always told just before the job's own
        # change, so that a worker can send both as one message.
        self._on_delivery_due = on_delivery_due
        self._on_report = on_report  # starts and endings, for the metrics
        self._clock = clock
        self._logs_events: dict[str, tuple[float, int]] = {}  # job id -> (last logs event, events sent)

    # -- callers ---------------------------------------------------------------------------------

    def submit(self, request: JobRequest) -> tuple[Job, bool]:
        """Persist a new job (committed before this returns). Returns (job, created).

        With an Idempotency-Key, a repeat of the same request returns the first job, whatever
        state it is in now; a different request under the same key raises IdempotencyKeyReused.
        A new job whose owner already has `max_queued_per_owner` jobs queued raises QueueFull.
        """
        fingerprint = request_fingerprint(request)
        if request.idempotency_key is not None:
            existing = self._existing(request, fingerprint)
            if existing is not None:
                return existing, False
        job_id = str(uuid.uuid4())
        try:
            self.store.insert(job_id, request, fingerprint, self._clock(), max_queued=self.max_queued_per_owner)
        except DuplicateIdempotencyKey:
            # A concurrent submit with the same key won the race.
            existing = self._existing(request, fingerprint)
            assert existing is not None
            return existing, False
        job = self.store.get(job_id)
        assert job is not None
        self._on_submitted(job)
        self._on_queue_moved()  # in the fair order a new job may go ahead of other owners' queued ones
        self._on_report(JobSubmitted(job.endpoint, job.dialect))
        return job, True

    def repeat_of(self, request: JobRequest) -> Job | None:
        """The job an earlier submit under this request's Idempotency-Key made, if any; raises
        IdempotencyKeyReused when that submit was a different request."""
        if request.idempotency_key is None:
            return None
        return self._existing(request, request_fingerprint(request))

    def _existing(self, request: JobRequest, fingerprint: str) -> Job | None:
        assert request.idempotency_key is not None
        found = self.store.find_by_idempotency_key(request.owner, request.idempotency_key)
        if found is None:
            return None
        job, stored_fingerprint = found
        if stored_fingerprint != fingerprint:
            raise IdempotencyKeyReused(request.idempotency_key)
        return self.store.get(job.id)

    def get(
        self, job_id: str, owner: str, *, with_logs: bool = False, with_preview: bool = False, logs_after: int = 0
    ) -> Job | None:
        """The job, or None when it does not exist or belongs to another API key."""
        job = self.store.get(job_id, with_logs=with_logs, with_preview=with_preview, logs_after=logs_after)
        if job is None or job.owner != owner:
            return None
        return job

    def cancel(self, job_id: str, owner: str) -> CancelOutcome:
        job = self.get(job_id, owner)
        if job is None:
            return CancelOutcome.NOT_FOUND
        if job.status is JobStatus.IN_QUEUE:
            if self._end(job, None, expected=(JobStatus.IN_QUEUE,), **_cancelled()):
                self._on_cancel_requested(job)
                return CancelOutcome.CANCELLED
            job = self.store.get(job_id) or job  # a worker took it meanwhile
        if job.status is JobStatus.IN_PROGRESS and self.store.request_cancel(job_id):
            self._on_changed(job_id)
            self._on_cancel_requested(job)
            return CancelOutcome.CANCELLATION_REQUESTED
        return CancelOutcome.ALREADY_COMPLETED

    # -- workers ---------------------------------------------------------------------------------

    def lease_next(self, holder: str) -> Lease | None:
        """Lease the next queued job for `holder` (a worker name, the prefix of the lease token): the
        oldest of the owner served least recently."""
        token = f"{holder}:{uuid.uuid4().hex}"
        now = self._clock()
        return self._leased(self.store.lease_next(token, now, now + self.lease_seconds), token, now)

    def lease(self, job_id: str, holder: str) -> Lease | None:
        """Lease one named job for `holder` (on Modal, the FunctionCall that was spawned for it).

        None when the job has ended or another holder runs it. The same holder may take over its own
        lease: Modal re-runs an input whose container was preempted under the same call.
        """
        token = f"{holder}:{uuid.uuid4().hex}"
        now = self._clock()
        job = self.store.lease_job(job_id, token, now, now + self.lease_seconds, holder=holder)
        return self._leased(job, token, now)

    def lease_batch_mates(self, first: Lease, holder: str, is_mate: Callable[[Job], bool], limit: int) -> list[Lease]:
        """Lease up to `limit` more queued jobs of `first`'s endpoint that `is_mate` accepts, oldest
        first, to run in one batch with it. Each keeps its own lease, result and webhook."""
        mates: list[Lease] = []
        for job in self.store.queued(first.job.endpoint, limit=limit * 4):
            if len(mates) == limit:
                break
            if job.id != first.job.id and is_mate(job):
                leased = self.lease(job.id, holder)
                if leased is not None:
                    mates.append(leased)
        return mates

    def _leased(self, job: Job | None, token: str, now: float) -> Lease | None:
        if job is None:
            return None
        started = self._endings.progress(job, "start", 0)
        if started is not None:
            self.store.enqueue_webhook(started, now)
            self._on_delivery_due()
        # Reports go before the change: a worker's reports ride along with its next change message.
        self._on_report(JobStarted(job.endpoint, job.dialect, max(now - job.created_at, 0.0)))
        self._on_changed(job.id)
        self._on_queue_moved()
        return Lease(job, token)

    def heartbeat(
        self, lease: Lease, logs: list[LogLine], progress: Progress | None = None, preview: Preview | None = None
    ) -> tuple[bool, bool]:
        """Record a run's events and renew the lease. Returns (still ours, cancel requested)."""
        self.record(lease, logs, progress, preview)
        return self.store.renew_lease(lease.job.id, lease.token, self._clock() + self.lease_seconds)

    def record(
        self, lease: Lease, logs: list[LogLine], progress: Progress | None = None, preview: Preview | None = None
    ) -> None:
        """A run's log lines, its latest progress and preview, in one write; then the job's watchers wake."""
        if logs or progress is not None or preview is not None:
            self.store.append_logs(lease.job.id, logs, progress, token=lease.token, preview=preview)
            if logs:
                self._send_logs_event(lease.job)
            self._on_changed(lease.job.id)

    def lease_state(self, lease: Lease) -> tuple[bool, bool]:
        """A read-only look: (still ours, cancel requested). Cheap enough to ask several times a second."""
        return self.store.lease_state(lease.job.id, lease.token)

    def _send_logs_event(self, job: Job) -> None:
        if "logs" not in job.webhook_events or job.webhook_url is None:
            return
        now = self._clock()
        last, count = self._logs_events.get(job.id, (0.0, 0))
        if now - last < LOGS_EVENT_INTERVAL_SECONDS:
            return  # throttled: a later event carries these lines too
        current = self.store.get(job.id, with_logs=True)
        message = None if current is None else self._endings.progress(current, "logs", count)
        if message is not None:
            self.store.enqueue_webhook(message, now)
            self._logs_events[job.id] = (now, count + 1)
            self._on_delivery_due()

    # A run's last log lines are written with its ending, in the same transaction: one commit fewer
    # on every job, and the ending's webhook carries them.

    def complete(
        self,
        lease: Lease,
        result: dict[str, Any],
        inference_time: float,
        logs: Sequence[LogLine] = (),
        progress: Progress | None = None,
    ) -> bool:
        return self._end(
            lease.job,
            lease.token,
            expected=(JobStatus.IN_PROGRESS,),
            logs=logs,
            status=JobStatus.COMPLETED,
            result=result,
            inference_time=inference_time,
            progress=progress,
        )

    def fail(
        self,
        lease: Lease,
        error_type: ErrorType,
        message: str,
        detail: Any = None,
        logs: Sequence[LogLine] = (),
        progress: Progress | None = None,
    ) -> bool:
        return self._end(
            lease.job,
            lease.token,
            expected=(JobStatus.IN_PROGRESS,),
            logs=logs,
            status=JobStatus.COMPLETED,
            error=message,
            error_type=error_type,
            error_detail=detail,
            progress=progress,
        )

    def fail_unstarted(self, job: Job, error_type: ErrorType, message: str) -> bool:
        """End a queued job that its executor could not start at all (on Modal: the container it was
        spawned into failed before running it, after Modal's own retries)."""
        return self._end(
            job,
            None,
            expected=(JobStatus.IN_QUEUE,),
            status=JobStatus.COMPLETED,
            error=message,
            error_type=error_type,
        )

    def acknowledge_cancel(self, lease: Lease, logs: Sequence[LogLine] = (), progress: Progress | None = None) -> bool:
        return self._end(
            lease.job,
            lease.token,
            expected=(JobStatus.IN_PROGRESS,),
            logs=logs,
            progress=progress,
            **_cancelled(),
        )

    # -- recovery --------------------------------------------------------------------------------

    def recover_job(self, job: Job) -> None:
        """Decide what becomes of an IN_PROGRESS job whose worker is gone."""
        token = self.store.lease_token(job.id)
        if token is None:
            return
        if job.cancel_requested:
            self._end(job, token, expected=(JobStatus.IN_PROGRESS,), **_cancelled())
        elif job.attempts >= self.max_attempts:
            self._end(
                job,
                token,
                expected=(JobStatus.IN_PROGRESS,),
                status=JobStatus.COMPLETED,
                error=f"the worker running this request stopped {job.attempts} times",
                error_type=ErrorType.WORKER_LOST,
            )
        elif self.store.requeue(job.id, token):
            log.warning("re-queued %s: its worker is gone (attempt %d)", job.id, job.attempts)
            self._on_submitted(job)
            self._on_changed(job.id)
            self._on_queue_moved()  # back at its old place, ahead of later jobs

    def recover_expired_leases(self) -> int:
        expired = self.store.expired_leases(self._clock())
        for job in expired:
            self.recover_job(job)
        return len(expired)

    def recover_holder(self, holder: str) -> int:
        """A worker died (or a node restarted: `holder` is then the node's name, the prefix of its
        workers' names): recover its jobs now instead of waiting for their leases to run out."""
        jobs = [job for job in self.store.in_progress() if _held_by(self.store.lease_token(job.id) or "", holder)]
        for job in jobs:
            self.recover_job(job)
        return len(jobs)

    def recover_all_in_progress(self) -> int:
        """At start-up, with no worker of ours alive yet, every IN_PROGRESS job is an orphan."""
        orphans = self.store.in_progress()
        for job in orphans:
            self.recover_job(job)
        return len(orphans)

    # -- the single exit -------------------------------------------------------------------------

    def _end(
        self,
        job: Job,
        token: str | None,
        *,
        expected: tuple[JobStatus, ...],
        status: JobStatus,
        logs: Sequence[LogLine] = (),
        **fields: Any,
    ) -> bool:
        self._logs_events.pop(job.id, None)
        if self._endings.carries_logs(job):
            job = dataclasses.replace(job, logs=[*self.store.logs(job.id), *logs])
        ended = dataclasses.replace(job, status=status, completed_at=self._clock(), **fields)
        message = self._endings.ending(ended)
        assert ended.completed_at is not None
        written = self.store.finish(
            ended,
            expected=expected,
            token=token,
            message=message,
            deliver_at=ended.completed_at + self._webhook_first_delay(),
            logs=logs,
        )
        if written:
            self._on_report(JobEnded.of(ended))
            if message is not None:
                self._on_delivery_due()
            self._on_changed(job.id)
            if JobStatus.IN_QUEUE in expected:
                self._on_queue_moved()
        return written


def build_service(
    settings: Settings,
    store: JobStore,
    *,
    endings: JobEndings,
    on_submitted: Callable[[Job], None],
    on_changed: Callable[[str], None],
    on_queue_moved: Callable[[], None] = lambda: None,
    on_cancel_requested: Callable[[Job], None] = lambda job: None,
    on_delivery_due: Callable[[], None] = lambda: None,
    on_report: Callable[[Report], None] = lambda report: None,
) -> JobService:
    """The JobService every process of one deployment builds, from the one Settings object."""
    first_delay = settings.webhook_retry_schedule[0]
    return JobService(
        store,
        endings=endings,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_job_attempts,
        max_queued_per_owner=settings.max_queued_per_key,
        webhook_first_delay=lambda: first_delay,
        on_submitted=on_submitted,
        on_changed=on_changed,
        on_queue_moved=on_queue_moved,
        on_cancel_requested=on_cancel_requested,
        on_delivery_due=on_delivery_due,
        on_report=on_report,
    )


def _held_by(token: str, holder: str) -> bool:
    """Lease tokens are `worker:random`, worker names `node.wN-random`: a holder is either."""
    owner = token.partition(":")[0]
    return owner == holder or owner.startswith(holder + ".")


def _cancelled() -> dict[str, Any]:
    return {
        "status": JobStatus.CANCELLED,
        "error": CANCELLED_MESSAGE,
        "error_type": ErrorType.CANCELLED,
        "error_detail": CANCELLED_MESSAGE,
    }
