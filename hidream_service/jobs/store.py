"""SQLite job store (WAL). It persists and answers queries; every decision lives in JobService.

Writes that change a job's state are compare-and-set: they name the state (and, for a worker, the
lease token) they expect, so a worker whose lease was taken away cannot overwrite a newer outcome.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hidream_service.jobs.model import ErrorType, Job, JobRequest, JobStatus, LogLine, Progress
from webhooks import outbox

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: queue order and queue position
    id TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    owner TEXT NOT NULL,                    -- fingerprint of the API key that submitted it ('' if open)
    dialect TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    webhook_url TEXT,
    base_url TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    error_type TEXT,
    error_detail TEXT,
    inference_time REAL,
    client_input TEXT,                      -- the dialect's own input, echoed back in its responses
    webhook_events TEXT NOT NULL DEFAULT '', -- comma-separated progress events wanted (Replicate)
    progress_step INTEGER,                  -- the run's last progress event: step of total
    progress_total INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);    -- one caller's recent requests
CREATE TABLE IF NOT EXISTS job_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    timestamp REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_by_job ON job_logs (job_id, seq);
"""
#: Columns added after the first release, added in place to a database that lacks them.
ADDED_COLUMNS = {"jobs": (("progress_step", "INTEGER"), ("progress_total", "INTEGER"))}


class DuplicateIdempotencyKey(Exception):
    """Another job already holds this (owner, Idempotency-Key)."""


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _row_to_job(row: sqlite3.Row, *, queue_position: int | None = None, logs: list[LogLine] | None = None) -> Job:
    return Job(
        id=row["id"],
        endpoint=row["endpoint"],
        owner=row["owner"],
        dialect=row["dialect"],
        status=JobStatus(row["status"]),
        input=json.loads(row["input"]),
        webhook_url=row["webhook_url"],
        base_url=row["base_url"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        result=_loads(row["result"]),
        error=row["error"],
        error_type=None if row["error_type"] is None else ErrorType(row["error_type"]),
        error_detail=_loads(row["error_detail"]),
        inference_time=row["inference_time"],
        queue_position=queue_position,
        logs=logs or [],
        client_input=_loads(row["client_input"]),
        webhook_events=tuple(event for event in row["webhook_events"].split(",") if event),
        seq=row["seq"],
        progress=None if row["progress_total"] is None else Progress(row["progress_step"], row["progress_total"]),
    )


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """A data dir made before a column existed gets it (NULL in every old row). Under the write
    lock, so that two processes opening an old database do not both add it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, columns in ADDED_COLUMNS.items():
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteJobStore:
    """One connection per store object, guarded by a lock; each process makes its own store."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        with self._lock:
            self._conn.executescript(SCHEMA)
            _add_missing_columns(self._conn)
            outbox.create_tables(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- submit ---------------------------------------------------------------------------------

    def insert(self, job_id: str, request: JobRequest, request_hash: str, now: float) -> None:
        """Commit a new queued job. Raises DuplicateIdempotencyKey if the key is taken."""
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO jobs (id, endpoint, owner, dialect, status, input, webhook_url, base_url,"
                    " idempotency_key, request_hash, created_at, client_input, webhook_events)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        request.endpoint,
                        request.owner,
                        request.dialect,
                        JobStatus.IN_QUEUE.value,
                        json.dumps(request.input, separators=(",", ":")),
                        request.webhook_url,
                        request.base_url,
                        request.idempotency_key,
                        request_hash,
                        now,
                        None if request.client_input is None else json.dumps(request.client_input),
                        ",".join(request.webhook_events),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if request.idempotency_key is not None and "idempotency_key" in str(exc):
                    raise DuplicateIdempotencyKey(request.idempotency_key) from exc
                raise

    def find_by_idempotency_key(self, owner: str, key: str) -> tuple[Job, str] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key)
            ).fetchone()
        return None if row is None else (_row_to_job(row), row["request_hash"])

    # -- reads ----------------------------------------------------------------------------------

    def get(self, job_id: str, *, with_logs: bool = False) -> Job | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            position = None
            if row["status"] == JobStatus.IN_QUEUE.value:
                (position,) = self._conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'IN_QUEUE' AND seq < ?", (row["seq"],)
                ).fetchone()
            logs = self.logs(job_id) if with_logs else None
        return _row_to_job(row, queue_position=position, logs=logs)

    def logs(self, job_id: str) -> list[LogLine]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT timestamp, level, message FROM job_logs WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        return [LogLine(row["timestamp"], row["level"], row["message"]) for row in rows]

    def page(self, owner: str, dialect: str | None, *, before_seq: int | None, limit: int) -> list[Job]:
        """Newest first: up to `limit` jobs of this owner (and dialect, None: any) submitted before `before_seq`."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE owner = :owner AND (:dialect IS NULL OR dialect = :dialect)"
                " AND seq < :before ORDER BY seq DESC LIMIT :limit",
                {
                    "owner": owner,
                    "dialect": dialect,
                    "before": before_seq if before_seq is not None else 2**62,
                    "limit": limit,
                },
            ).fetchall()
        return [_row_to_job(row) for row in rows]

    def enqueue_webhook(self, message: outbox.OutboxMessage, due_at: float) -> None:
        """A progress event's delivery, outside any state change."""
        with self._lock:
            outbox.enqueue(self._conn, message, due_at=due_at)

    def expired_leases(self, now: float) -> list[Job]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE status = 'IN_PROGRESS' AND lease_expires_at < ?", (now,)
            ).fetchall()
        return [_row_to_job(row) for row in rows]

    def in_progress(self) -> list[Job]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM jobs WHERE status = 'IN_PROGRESS'").fetchall()
        return [_row_to_job(row) for row in rows]

    def lease_token(self, job_id: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT lease_token FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    # -- worker side ----------------------------------------------------------------------------

    def lease_next(self, token: str, now: float, expires_at: float) -> Job | None:
        """Atomically move the oldest queued job to IN_PROGRESS under a new lease."""
        with self._lock:
            row = self._conn.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', lease_token = ?, lease_expires_at = ?,"
                " attempts = attempts + 1, started_at = ?, progress_step = NULL, progress_total = NULL WHERE seq = ("
                " SELECT seq FROM jobs WHERE status = 'IN_QUEUE' ORDER BY seq LIMIT 1) RETURNING *",
                (token, expires_at, now),
            ).fetchone()
        return None if row is None else _row_to_job(row)

    def queued(self, endpoint: str, limit: int) -> list[Job]:
        """The oldest queued jobs of one endpoint, in queue order (batching candidates)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE status = 'IN_QUEUE' AND endpoint = ? ORDER BY seq LIMIT ?",
                (endpoint, limit),
            ).fetchall()
        return [_row_to_job(row) for row in rows]

    def lease_job(self, job_id: str, token: str, now: float, expires_at: float, *, holder: str) -> Job | None:
        """Lease one named job: from IN_QUEUE, or take over a lease `holder` itself held before."""
        prefix = holder + ":"
        with self._lock:
            row = self._conn.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', lease_token = ?, lease_expires_at = ?,"
                " attempts = attempts + 1, started_at = ?, progress_step = NULL, progress_total = NULL"
                " WHERE id = ? AND (status = 'IN_QUEUE'"
                " OR (status = 'IN_PROGRESS' AND substr(lease_token, 1, ?) = ?)) RETURNING *",
                (token, expires_at, now, job_id, len(prefix), prefix),
            ).fetchone()
        return None if row is None else _row_to_job(row)

    def renew_lease(self, job_id: str, token: str, expires_at: float) -> tuple[bool, bool]:
        """Extend a lease. Returns (still ours, cancel requested)."""
        with self._lock:
            row = self._conn.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ?"
                " AND status = 'IN_PROGRESS' RETURNING cancel_requested",
                (expires_at, job_id, token),
            ).fetchone()
        return (False, False) if row is None else (True, bool(row[0]))

    def lease_state(self, job_id: str, token: str) -> tuple[bool, bool]:
        """Read-only: (still leased by this token, cancel requested)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT cancel_requested FROM jobs WHERE id = ? AND lease_token = ? AND status = 'IN_PROGRESS'",
                (job_id, token),
            ).fetchone()
        return (False, False) if row is None else (True, bool(row[0]))

    def append_logs(
        self, job_id: str, lines: Iterable[LogLine], progress: Progress | None = None, *, token: str | None = None
    ) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN")
            self._insert_logs(job_id, lines)
            if progress is not None and token is not None:
                self._conn.execute(
                    "UPDATE jobs SET progress_step = ?, progress_total = ? WHERE id = ? AND lease_token = ?",
                    (progress.step, progress.total, job_id, token),
                )

    def _insert_logs(self, job_id: str, lines: Iterable[LogLine]) -> None:
        self._conn.executemany(
            "INSERT INTO job_logs (job_id, timestamp, level, message) VALUES (?, ?, ?, ?)",
            [(job_id, line.timestamp, line.level, line.message) for line in lines],
        )

    def requeue(self, job_id: str, token: str) -> bool:
        """Give an IN_PROGRESS job back to the queue (its worker is gone), keeping its queue place."""
        with self._lock:
            row = self._conn.execute(
                "UPDATE jobs SET status = 'IN_QUEUE', lease_token = NULL, lease_expires_at = NULL,"
                " progress_step = NULL, progress_total = NULL"
                " WHERE id = ? AND lease_token = ? AND status = 'IN_PROGRESS' RETURNING id",
                (job_id, token),
            ).fetchone()
        return row is not None

    def request_cancel(self, job_id: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'IN_PROGRESS' RETURNING id",
                (job_id,),
            ).fetchone()
        return row is not None

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
        placeholders = ",".join("?" for _ in expected)
        token_clause = " AND lease_token = ?" if token is not None else ""
        params: list[Any] = [
            job.status.value,
            job.completed_at,
            None if job.result is None else json.dumps(job.result, separators=(",", ":")),
            job.error,
            None if job.error_type is None else job.error_type.value,
            None if job.error_detail is None else json.dumps(job.error_detail),
            job.inference_time,
            None if job.progress is None else job.progress.step,
            None if job.progress is None else job.progress.total,
            job.id,
            *[status.value for status in expected],
        ]
        if token is not None:
            params.append(token)
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._insert_logs(job.id, logs)
            row = self._conn.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, result = ?, error = ?, error_type = ?,"
                " error_detail = ?, inference_time = ?, progress_step = COALESCE(?, progress_step),"
                " progress_total = COALESCE(?, progress_total), lease_token = NULL, lease_expires_at = NULL"
                f" WHERE id = ? AND status IN ({placeholders}){token_clause} RETURNING id",
                params,
            ).fetchone()
            if row is None:
                return False
            if message is not None:
                outbox.enqueue(self._conn, message, due_at=deliver_at)
        return True
