"""The job store in modal.Dicts: the same contract as jobs.store.SqlJobStore.

Three Dicts, so that nothing is scanned that need not be:

- `jobs`: per job a versioned record (every state change is a compare-and-set, see kv.py), its log
  lines, its cancel flag and its lease renewals; per (owner, Idempotency-Key) a claim; the submit
  sequence. Never scanned.
- `active`: job id -> {seq, status} for jobs not yet ended: what queue positions, `lease_next` and
  the sweeper's recovery scan. Small: only jobs queued or running.
- `listing`: seq -> {id, owner, dialect}: what a listing scans (Replicate's GET /v1/predictions).

Limits, all from modal.Dict having no transactions:
- An ending and its webhook are one write: the terminal version carries the outbox message, and
  the delivery record is created from it right after; the sweeper re-creates any delivery a crash
  left unwritten (`repair_endings`). An ending is therefore never without its webhook.
- `active` and `due` entries are hints, corrected by whoever reads the record they point at.
- Logs, progress and lease renewals are written only by the lease holder: last writer wins.
- Queue positions count the jobs ahead that `active` says are queued; they can be off by a job
  or two while states change, which fal's clients only display.
- Every read is a network round trip (about 2 for a job, 3 while it runs: its progress), and `page`
  reads the whole listing.
- Entries vanish after 7 days untouched (Modal's Dict expiry): a finished job is forgotten a week
  after it was last read, its idempotency key with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from hidream_service.jobs.model import ErrorType, Job, JobRequest, JobStatus, LogLine, Progress
from hidream_service.jobs.store import DuplicateIdempotencyKey
from hidream_service.modal_backend.kv import AppendOnlyLog, KeyValueStore, Record, VersionedRecords
from hidream_service.modal_backend.outbox import DictOutbox
from webhooks.outbox import OutboxMessage

IN_QUEUE = JobStatus.IN_QUEUE.value
IN_PROGRESS = JobStatus.IN_PROGRESS.value


def _message_record(message: OutboxMessage | None, deliver_at: float) -> Record | None:
    if message is None:
        return None
    return {**dataclasses.asdict(message), "deliver_at": deliver_at}


def _message(record: Record) -> tuple[OutboxMessage, float]:
    fields = {key: value for key, value in record.items() if key != "deliver_at"}
    return OutboxMessage(**fields), float(record["deliver_at"])


class DictJobStore:
    def __init__(self, jobs: KeyValueStore, active: KeyValueStore, listing: KeyValueStore, outbox: DictOutbox) -> None:
        self._jobs = jobs
        self._records = VersionedRecords(jobs)
        self._logs = AppendOnlyLog(jobs)
        self._active = active
        self._listing = listing
        self.outbox = outbox

    def close(self) -> None:
        """Nothing to release."""

    # -- submit ---------------------------------------------------------------------------------

    def insert(self, job_id: str, request: JobRequest, request_hash: str, now: float) -> None:
        seq = self._claim_seq({"id": job_id, "owner": request.owner, "dialect": request.dialect})
        # The active entry comes first: whatever step a crash interrupts, the sweeper can see the job.
        self._active.put(job_id, {"seq": seq, "status": IN_QUEUE})
        record = {
            "id": job_id,
            "seq": seq,
            "endpoint": request.endpoint,
            "owner": request.owner,
            "dialect": request.dialect,
            "status": IN_QUEUE,
            "input": request.input,
            "webhook_url": request.webhook_url,
            "base_url": request.base_url,
            "idempotency_key": request.idempotency_key,
            "request_hash": request_hash,
            "created_at": now,
            "started_at": None,
            "completed_at": None,
            "attempts": 0,
            "lease_token": None,
            "lease_expires_at": None,
            "result": None,
            "error": None,
            "error_type": None,
            "error_detail": None,
            "inference_time": None,
            "client_input": request.client_input,
            "webhook_events": list(request.webhook_events),
            "ending_message": None,
        }
        self._records.create(f"job:{job_id}", record)
        if request.idempotency_key is None:
            return
        claim = self._idempotency_key(request.owner, request.idempotency_key)
        if not self._jobs.put(claim, job_id, skip_if_exists=True):
            # Lost to a concurrent submit with the same key: withdraw this job, as a rolled-back
            # INSERT would be. It was never answered, so nobody knows its id.
            self._records.update(f"job:{job_id}", lambda current: {**current, "status": JobStatus.CANCELLED.value})
            self._active.pop(job_id, None)
            self._listing.pop(seq, None)
            raise DuplicateIdempotencyKey(request.idempotency_key)

    def _claim_seq(self, entry: Record) -> int:
        seq = int(self._jobs.get("seq#next", 1))
        while not self._listing.put(seq, entry, skip_if_exists=True):
            seq += 1
        self._jobs.put("seq#next", seq + 1)
        return seq

    @staticmethod
    def _idempotency_key(owner: str, key: str) -> str:
        return f"idempotency:{owner}:{key}"

    def find_by_idempotency_key(self, owner: str, key: str) -> tuple[Job, str] | None:
        job_id = self._jobs.get(self._idempotency_key(owner, key))
        record = None if job_id is None else self._records.get(f"job:{job_id}")
        return None if record is None else (self._job(record), record["request_hash"])

    # -- reads ----------------------------------------------------------------------------------

    def get(self, job_id: str, *, with_logs: bool = False) -> Job | None:
        record = self._records.get(f"job:{job_id}")
        if record is None:
            return None
        position = self._queue_position(record["seq"]) if record["status"] == IN_QUEUE else None
        return self._job(record, queue_position=position, logs=self.logs(job_id) if with_logs else None)

    def _queue_position(self, seq: int) -> int:
        return sum(1 for _, entry in self._active.items() if entry["status"] == IN_QUEUE and int(entry["seq"]) < seq)

    def logs(self, job_id: str) -> list[LogLine]:
        return [LogLine(*line) for chunk in self._logs.read(f"logs:{job_id}") for line in chunk]

    def page(self, owner: str, dialect: str | None, *, before_seq: int | None, limit: int) -> list[Job]:
        limit_seq = before_seq if before_seq is not None else 2**62
        matching = sorted(
            (
                (int(seq), entry["id"])
                for seq, entry in self._listing.items()
                if entry["owner"] == owner and dialect in (None, entry["dialect"]) and int(seq) < limit_seq
            ),
            reverse=True,
        )
        jobs = []
        for _, job_id in matching:
            record = self._records.get(f"job:{job_id}")
            if record is not None:
                jobs.append(self._job(record))
            if len(jobs) == limit:
                break
        return jobs

    def enqueue_webhook(self, message: OutboxMessage, due_at: float) -> None:
        self.outbox.enqueue(message, due_at)

    def in_progress(self) -> list[Job]:
        return [self._job(record) for record in self._active_records() if record["status"] == IN_PROGRESS]

    def expired_leases(self, now: float) -> list[Job]:
        return [
            self._job(record)
            for record in self._active_records()
            if record["status"] == IN_PROGRESS and self._lease_expires_at(record) < now
        ]

    def lease_token(self, job_id: str) -> str | None:
        record = self._records.get(f"job:{job_id}")
        return None if record is None else record["lease_token"]

    def unfinished(self) -> list[Job]:
        """Jobs queued or running, in submit order (the sweeper's worklist)."""
        return [self._job(record) for record in self._active_records()]

    def _active_records(self) -> list[Record]:
        """The records behind `active`, in submit order; entries of ended jobs are dropped."""
        records = []
        for job_id, _ in sorted(self._active.items(), key=lambda item: int(item[1]["seq"])):
            record = self._records.get(f"job:{job_id}")
            if record is None:
                continue  # a submit still writing it, or one that died before it could
            if JobStatus(record["status"]).is_terminal():
                if record["ending_message"] is None:
                    self._active.pop(job_id, None)  # its ending was written; only the pop was lost
                continue  # with a webhook to write: repair_endings' business
            records.append(record)
        return records

    def _lease_expires_at(self, record: Record) -> float:
        renewed = self._jobs.get(f"lease:{record['id']}:{record['lease_token']}")
        return max(float(record["lease_expires_at"] or 0.0), float(renewed or 0.0))

    # -- worker side ----------------------------------------------------------------------------

    def lease_next(self, token: str, now: float, expires_at: float) -> Job | None:
        """The oldest queued job. On Modal jobs are dispatched by spawn (`lease_job`); this serves the
        contract, and scans every job not yet ended."""
        for record in self._active_records():
            if record["status"] == IN_QUEUE:
                leased = self._lease(record["id"], token, now, expires_at, holder=None)
                if leased is not None:
                    return leased
        return None

    def queued(self, endpoint: str, limit: int) -> list[Job]:
        """Serves the contract; on Modal each spawned input runs one job, so nothing batches here."""
        records = [r for r in self._active_records() if r["status"] == IN_QUEUE and r["endpoint"] == endpoint]
        return [self._job(record) for record in records[:limit]]

    def lease_job(self, job_id: str, token: str, now: float, expires_at: float, *, holder: str) -> Job | None:
        return self._lease(job_id, token, now, expires_at, holder=holder)

    def _lease(self, job_id: str, token: str, now: float, expires_at: float, *, holder: str | None) -> Job | None:
        def take(record: Record) -> Record | None:
            own_rerun = (
                holder is not None
                and record["status"] == IN_PROGRESS
                and (record["lease_token"] or "").startswith(holder + ":")
            )
            if record["status"] != IN_QUEUE and not own_rerun:
                return None
            return {
                **record,
                "status": IN_PROGRESS,
                "lease_token": token,
                "lease_expires_at": expires_at,
                "attempts": record["attempts"] + 1,
                "started_at": now,
            }

        leased = self._records.update(f"job:{job_id}", take)
        if leased is None:
            return None
        self._active.put(job_id, {"seq": leased["seq"], "status": IN_PROGRESS})
        return self._job(leased)

    def renew_lease(self, job_id: str, token: str, expires_at: float) -> tuple[bool, bool]:
        ours, cancel = self.lease_state(job_id, token)
        if ours:
            self._jobs.put(f"lease:{job_id}:{token}", expires_at)
        return ours, cancel

    def lease_state(self, job_id: str, token: str) -> tuple[bool, bool]:
        record = self._records.get(f"job:{job_id}")
        if record is None or record["status"] != IN_PROGRESS or record["lease_token"] != token:
            return False, False
        return True, self._jobs.contains(f"cancel:{job_id}")

    def append_logs(
        self, job_id: str, lines: Iterable[LogLine], progress: Progress | None = None, *, token: str | None = None
    ) -> None:
        chunk = [[line.timestamp, line.level, line.message] for line in lines]
        if chunk:
            self._logs.append(f"logs:{job_id}", chunk)
        if progress is not None and token is not None:
            # Beside the record under the run's lease token, like its renewals: a new version of the
            # record would void the holder's lease writes, and a re-run (a new token) starts without it.
            self._jobs.put(f"progress:{job_id}:{token}", [progress.step, progress.total])

    def _progress(self, record: Record) -> Progress | None:
        """A running job's progress is beside its record, under its lease; an ended one's is in it."""
        if record["status"] == IN_PROGRESS:
            stored = self._jobs.get(f"progress:{record['id']}:{record['lease_token']}")
        else:
            stored = record.get("progress")
        return None if stored is None else Progress(int(stored[0]), int(stored[1]))

    def requeue(self, job_id: str, token: str) -> bool:
        def give_back(record: Record) -> Record | None:
            if record["status"] != IN_PROGRESS or record["lease_token"] != token:
                return None
            return {**record, "status": IN_QUEUE, "lease_token": None, "lease_expires_at": None}

        requeued = self._records.update(f"job:{job_id}", give_back)
        if requeued is None:
            return False
        self._active.put(job_id, {"seq": requeued["seq"], "status": IN_QUEUE})
        return True

    def request_cancel(self, job_id: str) -> bool:
        record = self._records.get(f"job:{job_id}")
        if record is None or record["status"] != IN_PROGRESS:
            return False
        # A flag beside the record, not a new version: the running container's writes stay valid.
        self._jobs.put(f"cancel:{job_id}", True)
        return True

    def cancel_requested(self, job_id: str) -> bool:
        return self._jobs.contains(f"cancel:{job_id}")

    # -- the one way a job ends -----------------------------------------------------------------

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
        self.append_logs(job.id, logs)
        allowed = {status.value for status in expected}
        final = job.progress
        if final is None and token is not None:
            stored = self._jobs.get(f"progress:{job.id}:{token}")
            final = None if stored is None else Progress(int(stored[0]), int(stored[1]))

        def end(record: Record) -> Record | None:
            if record["status"] not in allowed or (token is not None and record["lease_token"] != token):
                return None
            return {
                **record,
                "status": job.status.value,
                "completed_at": job.completed_at,
                "result": job.result,
                "error": job.error,
                "error_type": None if job.error_type is None else job.error_type.value,
                "error_detail": job.error_detail,
                "inference_time": job.inference_time,
                "lease_token": None,
                "lease_expires_at": None,
                "progress": None if final is None else [final.step, final.total],
                "ending_message": _message_record(message, deliver_at),
            }

        ended = self._records.update(f"job:{job.id}", end)
        if ended is None:
            return False
        self._settle_ending(ended)
        return True

    def repair_endings(self) -> int:
        """Create the deliveries of jobs that ended without theirs (a crash between the two writes)."""
        repaired = 0
        for job_id, _ in list(self._active.items()):
            record = self._records.get(f"job:{job_id}")
            if record is not None and JobStatus(record["status"]).is_terminal():
                repaired += self._settle_ending(record)
        return repaired

    def _settle_ending(self, record: Record) -> int:
        """Write the ended job's delivery from its terminal version (idempotent), then leave `active`."""
        created = 0
        if record["ending_message"] is not None:
            message, deliver_at = _message(record["ending_message"])
            created = int(self.outbox.enqueue(message, deliver_at))
        self._active.pop(record["id"], None)
        return created

    # -- records to jobs ------------------------------------------------------------------------

    def _job(self, record: Record, *, queue_position: int | None = None, logs: list[LogLine] | None = None) -> Job:
        cancel_requested = record["status"] == IN_PROGRESS and self.cancel_requested(record["id"])
        error_type = record["error_type"]
        fields: dict[str, Any] = {
            "id": record["id"],
            "endpoint": record["endpoint"],
            "owner": record["owner"],
            "dialect": record["dialect"],
            "status": JobStatus(record["status"]),
            "input": record["input"],
            "webhook_url": record["webhook_url"],
            "base_url": record["base_url"],
            "created_at": record["created_at"],
            "started_at": record["started_at"],
            "completed_at": record["completed_at"],
            "attempts": record["attempts"],
            "cancel_requested": cancel_requested,
            "result": record["result"],
            "error": record["error"],
            "error_type": None if error_type is None else ErrorType(error_type),
            "error_detail": record["error_detail"],
            "inference_time": record["inference_time"],
            "queue_position": queue_position,
            "logs": logs or [],
            "client_input": record["client_input"],
            "webhook_events": tuple(record["webhook_events"]),
            "seq": record["seq"],
            "progress": self._progress(record),
        }
        return Job(**fields)
