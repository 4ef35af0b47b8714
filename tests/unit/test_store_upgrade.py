"""A data dir made before jobs recorded their progress opens in place: the columns are added and
every old job is still there."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hidream_service.jobs.model import JobStatus, LogLine, Progress
from hidream_service.jobs.store import SqliteJobStore

#: The jobs table as the release before typed progress created it.
JOBS_BEFORE_PROGRESS = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, endpoint TEXT NOT NULL,
    owner TEXT NOT NULL, dialect TEXT NOT NULL, status TEXT NOT NULL, input TEXT NOT NULL,
    webhook_url TEXT, base_url TEXT NOT NULL, idempotency_key TEXT, request_hash TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, completed_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT, lease_expires_at REAL, cancel_requested INTEGER NOT NULL DEFAULT 0, result TEXT,
    error TEXT, error_type TEXT, error_detail TEXT, inference_time REAL, client_input TEXT,
    webhook_events TEXT NOT NULL DEFAULT ''
);
INSERT INTO jobs (id, endpoint, owner, dialect, status, input, base_url, request_hash, created_at, lease_token)
VALUES ('old-job', 'hidream/noop', '', 'fal', 'IN_PROGRESS', '{}', 'http://t', 'h', 1.0, 'w:1');
"""


def test_an_old_database_gains_the_progress_columns_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "hidream.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(JOBS_BEFORE_PROGRESS)

    store = SqliteJobStore(path)
    before = store.get("old-job")
    store.append_logs("old-job", [LogLine(2.0, "INFO", "step 1/2")], Progress(1, 2), token="w:1")
    after = store.get("old-job", with_logs=True)
    store.close()

    assert before is not None and before.status is JobStatus.IN_PROGRESS and before.progress is None
    assert (
        after is not None and after.progress == Progress(1, 2) and [line.message for line in after.logs] == ["step 1/2"]
    )
