"""The SQL job store, on SQLite (one machine) or Postgres (several nodes). It persists and answers
queries; every decision lives in JobService.

Writes that change a job's state are compare-and-set: they name the state (and, for a worker, the
lease token) they expect, so a worker whose lease was taken away cannot overwrite a newer outcome.
On Postgres each write also tells the other nodes (NOTIFY, on commit), so that their workers and
watchers hear of it at once.

The queue is fair between owners (API keys): a worker leases the oldest queued job of the owner
served least recently (an owner never served first), so one key's backlog cannot hold back another
key's job for longer than one job per key with queued work. When an owner was last served is the
latest start of its jobs (an index, migration 4); no table of its own to keep in step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from hidream_service.config import Settings
from hidream_service.db.engine import Database, IntegrityError, Notice, Tx
from hidream_service.jobs.model import Job, JobRequest, JobStatus, LogLine, Preview, Progress
from hidream_service.jobs.record import document, job_from_row
from webhooks import outbox
from webhooks.outbox import storable

#: When the owner of the `waiting` row was last served (NULL: never): the latest start of its jobs.
_LAST_SERVED = (
    "(SELECT MAX(served.started_at) FROM jobs AS served"
    " WHERE served.owner = waiting.owner AND served.started_at IS NOT NULL)"  # as the partial index has it
)
#: The owner whose turn it is: of those with queued jobs, the one served least recently (never served
#: first), then the one whose oldest queued job is oldest. Computed once per lease, per owner.
_NEXT_OWNER = (
    "(SELECT waiting.owner FROM (SELECT owner, MIN(seq) AS first_seq FROM jobs WHERE status = 'IN_QUEUE'"
    f" GROUP BY owner) AS waiting ORDER BY {_LAST_SERVED} NULLS FIRST, waiting.first_seq LIMIT 1)"
)
#: Postgres advisory-lock space (two-key form) in which one owner's submits take turns ("hdrq").
_SUBMIT_LOCK_SPACE = 0x68647271
#: A LIMIT that takes every row (a read that skips rows with OFFSET must name one).
_NO_LIMIT = 1 << 62

_LEASED = (
    "status = 'IN_PROGRESS', lease_token = :token, lease_expires_at = :expires, attempts = attempts + 1,"
    " started_at = :now, progress_step = NULL, progress_total = NULL"
)


def open_store(settings: Settings) -> SqlJobStore:
    """This process's store on the configured database (each process opens its own)."""
    return SqlJobStore(Database(settings.sql_url, node=settings.node_id or "", synchronous=settings.sqlite_synchronous))


class DuplicateIdempotencyKey(Exception):
    """Another job already holds this (owner, Idempotency-Key)."""


class QueueFull(Exception):
    """The owner already has `limit` jobs queued."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this API key already has {limit} requests queued")
        self.limit = limit


@dataclasses.dataclass(frozen=True)
class QueuedOwner:
    """One owner's share of the queue, as the fair order sees it."""

    queued: int
    ahead: int  # its queued jobs submitted before the one asked about
    first_seq: int
    served_at: float | None

    def turn(self) -> tuple[bool, float, int]:
        """Its place in the rotation: never served first, then least recently served, then oldest job."""
        return (self.served_at is not None, self.served_at or 0.0, self.first_seq)


def fair_position(owners: dict[str, QueuedOwner], owner: str) -> int:
    """How many queued jobs lease before the one asked about (`owners[owner].ahead` of its owner's own
    are ahead of it), if nothing else were submitted: each round serves every owner with jobs left
    once, in rotation order, so an owner ahead of this one in the rotation gets one more turn."""
    mine = owners[owner]
    rounds = mine.ahead
    position = rounds
    for name, other in owners.items():
        if name != owner:
            position += min(other.queued, rounds + int(other.turn() < mine.turn()))
    return position


class SqlJobStore:
    """Thread-safe: each call checks a connection out of the database's pool."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def close(self) -> None:
        self.db.close()

    # -- submit ---------------------------------------------------------------------------------

    def insert(self, job_id: str, request: JobRequest, request_hash: str, now: float, *, max_queued: int = 0) -> None:
        """Commit a new queued job. Raises DuplicateIdempotencyKey if the key is taken, and QueueFull
        if its owner already has `max_queued` jobs queued (0: no limit), counted in the same
        transaction as the insert."""
        job = Job(
            id=job_id,
            endpoint=request.endpoint,
            owner=request.owner,
            dialect=request.dialect,
            status=JobStatus.IN_QUEUE,
            input=request.input,
            webhook_url=request.webhook_url,
            base_url=request.base_url,
            created_at=now,
            client_input=request.client_input,
            webhook_events=request.webhook_events,
        )
        try:
            with self.db.write() as tx:
                if max_queued:
                    self._check_room(tx, request.owner, max_queued)
                tx.run(
                    "INSERT INTO jobs (id, endpoint, owner, dialect, status, idempotency_key, request_hash,"
                    " created_at, doc) VALUES (:id, :endpoint, :owner, :dialect, 'IN_QUEUE', :key, :hash, :now, :doc)",
                    {
                        "id": job_id,
                        "endpoint": job.endpoint,
                        "owner": job.owner,
                        "dialect": job.dialect,
                        "key": request.idempotency_key,
                        "hash": request_hash,
                        "now": now,
                        "doc": document(job),
                    },
                )
                self.db.notify(tx, Notice.QUEUED)
                self.db.notify(tx, Notice.MOVED)  # a new owner's job goes ahead of others' backlogs
        except IntegrityError as exc:
            if request.idempotency_key is not None and "idempotency" in str(exc):
                raise DuplicateIdempotencyKey(request.idempotency_key) from exc
            raise

    def _check_room(self, tx: Tx, owner: str, max_queued: int) -> None:
        if self.db.is_postgres:
            # One owner's submits take turns until commit, so two cannot both take the last place.
            # (SQLite's write lock already makes every writer take its turn.)
            tx.run(
                "SELECT pg_advisory_xact_lock(CAST(:space AS INTEGER), hashtext(:owner))",
                {"space": _SUBMIT_LOCK_SPACE, "owner": owner},
            )
        queued = tx.scalar("SELECT COUNT(*) FROM jobs WHERE owner = :owner AND status = 'IN_QUEUE'", {"owner": owner})
        if queued >= max_queued:
            raise QueueFull(max_queued)

    def find_by_idempotency_key(self, owner: str, key: str) -> tuple[Job, str] | None:
        with self.db.read() as tx:
            row = tx.row(
                "SELECT * FROM jobs WHERE owner = :owner AND idempotency_key = :key", {"owner": owner, "key": key}
            )
        return None if row is None else (job_from_row(row), row["request_hash"])

    # -- reads ----------------------------------------------------------------------------------

    def get(
        self, job_id: str, *, with_logs: bool = False, with_preview: bool = False, logs_after: int = 0
    ) -> Job | None:
        if not storable(job_id):
            return None  # no job can have this id (a caller's URL said `%00`)
        with self.db.read() as tx:
            row = tx.row("SELECT * FROM jobs WHERE id = :id", {"id": job_id})
            if row is None:
                return None
            position = None
            if row["status"] == JobStatus.IN_QUEUE.value:
                position = _queue_position(tx, row["owner"], row["seq"])
            logs = _logs(tx, job_id, after=logs_after) if with_logs else None
            preview = _preview(tx, job_id) if with_preview and row["status"] == JobStatus.IN_PROGRESS.value else None
        return job_from_row(row, queue_position=position, logs=logs, preview=preview)

    def logs(self, job_id: str) -> list[LogLine]:
        with self.db.read() as tx:
            return _logs(tx, job_id)

    def page(self, owner: str, dialect: str | None, *, before_seq: int | None, limit: int) -> list[Job]:
        """Newest first: up to `limit` jobs of this owner (and dialect, None: any) submitted before `before_seq`."""
        dialect_clause = "" if dialect is None else " AND dialect = :dialect"
        params: dict[str, Any] = {
            "owner": owner,
            "before": before_seq if before_seq is not None else 2**62,
            "limit": limit,
        }
        if dialect is not None:
            params["dialect"] = dialect
        return self._select(
            f"SELECT * FROM jobs WHERE owner = :owner{dialect_clause} AND seq < :before ORDER BY seq DESC LIMIT :limit",
            **params,
        )

    def enqueue_webhook(self, message: outbox.OutboxMessage, due_at: float) -> None:
        """A progress event's delivery, outside any state change."""
        with self.db.write() as tx:
            outbox.enqueue(tx, message, due_at=due_at)
            self.db.notify(tx, Notice.DELIVERY_DUE)

    def expired_leases(self, now: float) -> list[Job]:
        return self._select("SELECT * FROM jobs WHERE status = 'IN_PROGRESS' AND lease_expires_at < :now", now=now)

    def in_progress(self) -> list[Job]:
        return self._select("SELECT * FROM jobs WHERE status = 'IN_PROGRESS'")

    def active(self) -> tuple[dict[tuple[str, JobStatus], int], list[str]]:
        """Queued and running jobs counted by (endpoint, status), and the running jobs' lease tokens,
        in one read: what every node reports as the backlog (the metrics)."""
        with self.db.read() as tx:
            counts = tx.rows(
                "SELECT endpoint, status, COUNT(*) AS n FROM jobs WHERE status IN ('IN_QUEUE', 'IN_PROGRESS')"
                " GROUP BY endpoint, status"
            )
            tokens = tx.rows("SELECT lease_token FROM jobs WHERE status = 'IN_PROGRESS'")
        active = {(row["endpoint"], JobStatus(row["status"])): int(row["n"]) for row in counts}
        return active, [row["lease_token"] for row in tokens if row["lease_token"]]

    def lease_token(self, job_id: str) -> str | None:
        with self.db.read() as tx:
            token: str | None = tx.scalar("SELECT lease_token FROM jobs WHERE id = :id", {"id": job_id})
        return token

    def _select(self, sql: str, **params: Any) -> list[Job]:
        with self.db.read() as tx:
            rows = tx.rows(sql, params)
        return [job_from_row(row) for row in rows]

    # -- worker side ----------------------------------------------------------------------------

    def lease_next(self, token: str, now: float, expires_at: float) -> Job | None:
        """Atomically move the next queued job in the fair order (that no other node is leasing) to
        IN_PROGRESS: the oldest of the owner served least recently."""
        # The owner's jobs first; the others after, for when another node holds every one of its
        # queued jobs locked this instant (Postgres), so that this worker does not stand idle.
        return self._lease(
            f"UPDATE jobs SET {_LEASED} WHERE status = 'IN_QUEUE' AND seq = (SELECT seq FROM jobs"
            f" WHERE status = 'IN_QUEUE' ORDER BY CASE WHEN owner = {_NEXT_OWNER} THEN 0 ELSE 1 END, seq"
            f" LIMIT 1{self.db.skip_locked}) RETURNING *",
            token=token,
            now=now,
            expires=expires_at,
        )

    def queued(self, endpoint: str, limit: int) -> list[Job]:
        """The oldest queued jobs of one endpoint, in queue order (batching candidates)."""
        return self._select(
            "SELECT * FROM jobs WHERE status = 'IN_QUEUE' AND endpoint = :endpoint ORDER BY seq LIMIT :limit",
            endpoint=endpoint,
            limit=limit,
        )

    def lease_job(self, job_id: str, token: str, now: float, expires_at: float, *, holder: str) -> Job | None:
        """Lease one named job: from IN_QUEUE, or take over a lease `holder` itself held before."""
        prefix = holder + ":"
        return self._lease(
            f"UPDATE jobs SET {_LEASED} WHERE id = :id AND (status = 'IN_QUEUE'"
            " OR (status = 'IN_PROGRESS' AND substr(lease_token, 1, :n) = :prefix)) RETURNING *",
            token=token,
            now=now,
            expires=expires_at,
            id=job_id,
            n=len(prefix),
            prefix=prefix,
        )

    def _lease(self, sql: str, **params: Any) -> Job | None:
        with self.db.write() as tx:
            row = tx.row(sql, params)
            if row is not None:
                self.db.notify(tx, Notice.CHANGED, row["id"])
                self.db.notify(tx, Notice.MOVED)
        return None if row is None else job_from_row(row)

    def renew_lease(self, job_id: str, token: str, expires_at: float) -> tuple[bool, bool]:
        """Extend a lease. Returns (still ours, cancel requested)."""
        with self.db.write() as tx:
            cancel = tx.scalar(
                "UPDATE jobs SET lease_expires_at = :expires WHERE id = :id AND lease_token = :token"
                " AND status = 'IN_PROGRESS' RETURNING cancel_requested",
                {"expires": expires_at, "id": job_id, "token": token},
            )
        return (False, False) if cancel is None else (True, bool(cancel))

    def lease_state(self, job_id: str, token: str) -> tuple[bool, bool]:
        """Read-only: (still leased by this token, cancel requested)."""
        with self.db.read() as tx:
            cancel = tx.scalar(
                "SELECT cancel_requested FROM jobs WHERE id = :id AND lease_token = :token AND status = 'IN_PROGRESS'",
                {"id": job_id, "token": token},
            )
        return (False, False) if cancel is None else (True, bool(cancel))

    def append_logs(
        self,
        job_id: str,
        lines: Iterable[LogLine],
        progress: Progress | None = None,
        *,
        token: str | None = None,
        preview: Preview | None = None,
    ) -> None:
        with self.db.write() as tx:
            _insert_logs(tx, job_id, lines)
            if progress is not None and token is not None:
                tx.run(
                    "UPDATE jobs SET progress_step = :step, progress_total = :total"
                    " WHERE id = :id AND lease_token = :token",
                    {"step": progress.step, "total": progress.total, "id": job_id, "token": token},
                )
            if preview is not None and token is not None:
                tx.run(  # only while the run still holds the job (a run whose lease was taken writes nothing)
                    "INSERT INTO job_previews (job_id, step, image) SELECT :id, :step, :image WHERE EXISTS"
                    " (SELECT 1 FROM jobs WHERE id = :id AND lease_token = :token AND status = 'IN_PROGRESS')"
                    " ON CONFLICT (job_id) DO UPDATE SET step = excluded.step, image = excluded.image",
                    {"id": job_id, "step": preview.step, "image": preview.image, "token": token},
                )
            self.db.notify(tx, Notice.CHANGED, job_id)

    def requeue(self, job_id: str, token: str) -> bool:
        """Give an IN_PROGRESS job back to the queue (its worker is gone), keeping its queue place."""
        with self.db.write() as tx:
            requeued = tx.run(
                "UPDATE jobs SET status = 'IN_QUEUE', lease_token = NULL, lease_expires_at = NULL,"
                " progress_step = NULL, progress_total = NULL"
                " WHERE id = :id AND lease_token = :token AND status = 'IN_PROGRESS'",
                {"id": job_id, "token": token},
            )
            if requeued:
                tx.run("DELETE FROM job_previews WHERE job_id = :id", {"id": job_id})
                self.db.notify(tx, Notice.QUEUED)
                self.db.notify(tx, Notice.CHANGED, job_id)
                self.db.notify(tx, Notice.MOVED)
        return requeued > 0

    def request_cancel(self, job_id: str) -> bool:
        with self.db.write() as tx:
            flagged = tx.run(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = :id AND status = 'IN_PROGRESS'", {"id": job_id}
            )
            if flagged:
                self.db.notify(tx, Notice.CHANGED, job_id)
        return flagged > 0

    # -- retention ------------------------------------------------------------------------------

    def expire_files(self, completed_before: float, now: float, limit: int) -> list[str]:
        """Mark up to `limit` jobs that ended before `completed_before` as having lost their files;
        returns their ids (whose files the caller removes)."""
        with self.db.write() as tx:
            rows = tx.rows(
                "UPDATE jobs SET files_expired_at = :now WHERE seq IN (SELECT seq FROM jobs"
                " WHERE completed_at < :before AND files_expired_at IS NULL ORDER BY completed_at"
                f" LIMIT :limit{self.db.skip_locked}) RETURNING id",
                {"now": now, "before": completed_before, "limit": limit},
            )
        return [row["id"] for row in rows]

    # -- the one way a job ends -----------------------------------------------------------------

    def finish(
        self,
        job: Job,
        *,
        expected: Sequence[JobStatus],
        token: str | None,
        message: outbox.OutboxMessage | None,
        deliver_at: float = 0.0,
        logs: Sequence[LogLine] = (),
    ) -> bool:
        """Write the terminal fields of `job` and its webhook delivery in one transaction.

        Applies only if the stored job is still in one of `expected` (and, with a token, still
        leased by it); otherwise they are not written and False is returned. `logs` are appended
        in the same transaction either way.
        """
        token_clause = " AND lease_token = :token" if token is not None else ""
        params: dict[str, Any] = {
            "status": job.status.value,
            "completed_at": job.completed_at,
            "doc": document(dataclasses.replace(job, logs=[])),
            "step": None if job.progress is None else job.progress.step,
            "total": None if job.progress is None else job.progress.total,
            "id": job.id,
            "expected": [status.value for status in expected],
        }
        if token is not None:
            params["token"] = token
        with self.db.write() as tx:
            _insert_logs(tx, job.id, logs)
            ended = tx.run(
                "UPDATE jobs SET status = :status, completed_at = :completed_at, doc = :doc,"
                " progress_step = COALESCE(:step, progress_step), progress_total = COALESCE(:total, progress_total),"
                f" lease_token = NULL, lease_expires_at = NULL WHERE id = :id AND status IN :expected{token_clause}",
                params,
            )
            if not ended:
                return False
            tx.run("DELETE FROM job_previews WHERE job_id = :id", {"id": job.id})
            if message is not None:
                outbox.enqueue(tx, message, due_at=deliver_at)
                self.db.notify(tx, Notice.DELIVERY_DUE)
            self.db.notify(tx, Notice.CHANGED, job.id)
            if JobStatus.IN_QUEUE in expected:
                self.db.notify(tx, Notice.MOVED)
        return True


def _queue_position(tx: Tx, owner: str, seq: int) -> int:
    """Jobs that lease before the queued job `seq` of `owner`, in the fair order (lease_next's)."""
    rows = tx.rows(
        "SELECT owner, COUNT(*) AS queued, SUM(CASE WHEN seq < :seq THEN 1 ELSE 0 END) AS ahead,"
        f" MIN(seq) AS first_seq, {_LAST_SERVED} AS served_at FROM jobs AS waiting WHERE status = 'IN_QUEUE'"
        " GROUP BY owner",
        {"seq": seq},
    )
    owners = {
        row["owner"]: QueuedOwner(int(row["queued"]), int(row["ahead"]), int(row["first_seq"]), row["served_at"])
        for row in rows
    }
    if owner not in owners:
        return 0  # it left the queue between the two reads
    return fair_position(owners, owner)


def _logs(tx: Tx, job_id: str, after: int = 0) -> list[LogLine]:
    """The job's log lines in order, less its first `after` (what a stream has already given)."""
    sql = "SELECT timestamp, level, message FROM job_logs WHERE job_id = :id ORDER BY seq"
    params: dict[str, object] = {"id": job_id}
    if after > 0:  # no LIMIT ALL on SQLite, and no OFFSET without a LIMIT
        sql += " LIMIT :all OFFSET :after"
        params.update(all=_NO_LIMIT, after=after)
    rows = tx.rows(sql, params)
    return [LogLine(row["timestamp"], row["level"], row["message"]) for row in rows]


def _preview(tx: Tx, job_id: str) -> Preview | None:
    row = tx.row("SELECT step, image FROM job_previews WHERE job_id = :id", {"id": job_id})
    return None if row is None else Preview(row["step"], row["image"])


def _insert_logs(tx: Tx, job_id: str, lines: Iterable[LogLine]) -> None:
    tx.run_many(
        "INSERT INTO job_logs (job_id, timestamp, level, message) VALUES (:job, :t, :level, :message)",
        [{"job": job_id, "t": line.timestamp, "level": line.level, "message": line.message} for line in lines],
    )
