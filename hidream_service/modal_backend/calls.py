"""Which FunctionCall runs each job, in the SQL store beside the jobs themselves.

One row per job: the call it was last spawned into (a re-dispatch replaces it), and when a cancel of
it was asked while it ran (the sweeper interrupts a call that did not honour it in time).
"""

from __future__ import annotations

from dataclasses import dataclass

from hidream_service.db.engine import Database
from hidream_service.jobs.model import Job
from hidream_service.jobs.record import job_from_row


@dataclass(frozen=True)
class QueuedJob:
    job: Job
    call_id: str | None  # None: its spawn was lost (the process that submitted it died first)


class SpawnedCalls:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, job_id: str, call_id: str, now: float) -> None:
        with self._db.write() as tx:
            tx.run(
                "INSERT INTO spawned_calls (job_id, call_id, spawned_at) VALUES (:job, :call, :now)"
                " ON CONFLICT (job_id) DO UPDATE SET call_id = excluded.call_id, spawned_at = excluded.spawned_at,"
                " cancel_requested_at = NULL",
                {"job": job_id, "call": call_id, "now": now},
            )

    def call_id(self, job_id: str) -> str | None:
        with self._db.read() as tx:
            call_id: str | None = tx.scalar("SELECT call_id FROM spawned_calls WHERE job_id = :job", {"job": job_id})
        return call_id

    def cancel_requested(self, job_id: str, now: float) -> None:
        """Note the first time a cancel of this running job was asked."""
        with self._db.write() as tx:
            tx.run(
                "UPDATE spawned_calls SET cancel_requested_at = COALESCE(cancel_requested_at, :now)"
                " WHERE job_id = :job",
                {"job": job_id, "now": now},
            )

    def take_overdue_cancel(self, job_id: str, asked_before: float) -> str | None:
        """The call to interrupt if this job's cancel was asked before `asked_before` and not yet
        escalated; taking it clears the mark, so overlapping sweeps escalate once."""
        with self._db.write() as tx:
            call_id: str | None = tx.scalar(
                "UPDATE spawned_calls SET cancel_requested_at = NULL"
                " WHERE job_id = :job AND cancel_requested_at <= :before RETURNING call_id",
                {"job": job_id, "before": asked_before},
            )
        return call_id

    def queued(self, limit: int = 1000) -> list[QueuedJob]:
        """Queued jobs, oldest first, with the call each was spawned into."""
        with self._db.read() as tx:
            rows = tx.rows(
                "SELECT jobs.*, spawned_calls.call_id AS spawned_call_id FROM jobs"
                " LEFT JOIN spawned_calls ON spawned_calls.job_id = jobs.id"
                " WHERE jobs.status = 'IN_QUEUE' ORDER BY jobs.seq LIMIT :limit",
                {"limit": limit},
            )
        return [QueuedJob(job_from_row(row), row["spawned_call_id"]) for row in rows]
