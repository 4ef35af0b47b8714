"""A data dir made by the previous release (its SQLite layout, with no record of migrations) upgrades
in place when the new server starts on it: every job, log line, delivery and attempt is still there,
a queued job and one its old worker left running both run, and an in-flight webhook is sent."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx

from hidream_service.config import Settings
from hidream_service.db.schema import LATEST
from hidream_service.server import create_app
from tests.integration.harness import WebhookReceiver, serving, wait_until

#: The tables exactly as the previous release created them.
PREVIOUS_RELEASE_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, endpoint TEXT NOT NULL,
    owner TEXT NOT NULL, dialect TEXT NOT NULL, status TEXT NOT NULL, input TEXT NOT NULL,
    webhook_url TEXT, base_url TEXT NOT NULL, idempotency_key TEXT, request_hash TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, completed_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT, lease_expires_at REAL, cancel_requested INTEGER NOT NULL DEFAULT 0, result TEXT,
    error TEXT, error_type TEXT, error_detail TEXT, inference_time REAL, client_input TEXT,
    webhook_events TEXT NOT NULL DEFAULT '', progress_step INTEGER, progress_total INTEGER
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE INDEX jobs_by_owner ON jobs (owner, seq);
CREATE TABLE job_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, timestamp REAL NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL
);
CREATE INDEX job_logs_by_job ON job_logs (job_id, seq);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY, url TEXT NOT NULL, body BLOB NOT NULL, signer TEXT NOT NULL,
    context TEXT NOT NULL DEFAULT '', subject TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL, claimed INTEGER NOT NULL DEFAULT 0,
    single_attempt INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, finished_at REAL, last_error TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_subject ON webhook_deliveries (subject);
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id), attempt INTEGER NOT NULL,
    started_at REAL NOT NULL, status_code INTEGER, latency_ms REAL NOT NULL, error TEXT,
    response_head TEXT, replay INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (delivery_id, attempt)
);
"""

JOB_COLUMNS = (
    "id, endpoint, owner, dialect, status, input, webhook_url, base_url, request_hash, created_at, started_at,"
    " completed_at, attempts, lease_token, result, inference_time, client_input, webhook_events,"
    " progress_step, progress_total"
)


def previous_release_data_dir(data_dir: Path, hook: str) -> None:
    data_dir.mkdir()
    done = {"images": [{"url": "http://old/files/done/0.png", "width": 64, "height": 64}], "seed": 7}
    with sqlite3.connect(data_dir / "hidream.sqlite3") as conn:
        conn.executescript(PREVIOUS_RELEASE_SCHEMA)
        conn.executemany(
            f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * 20)})",
            [
                ("done", "hidream/noop", "", "fal", "COMPLETED", '{"seed":7}', hook, "http://old", "h1", 1.0, 2.0,
                 3.0, 1, None, json.dumps(done), 0.5, '{"seed":7}', "", 4, 4),
                ("queued", "hidream/noop", "", "replicate", "IN_QUEUE", "{}", None, "http://old", "h2", 4.0, None,
                 None, 0, None, None, None, None, "start,completed", None, None),
                ("orphan", "hidream/noop", "", "fal", "IN_PROGRESS", "{}", None, "http://old", "h3", 5.0, 6.0,
                 None, 1, "w0-0123abcd:feed", None, None, None, "", 1, 4),
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO job_logs (job_id, timestamp, level, message) VALUES (?, ?, ?, ?)",
            [("done", 2.5, "INFO", "step 4/4"), ("done", 2.6, "INFO", "saved 1 image"), ("orphan", 6.5, "INFO", "x")],
        )
        conn.executemany(
            "INSERT INTO webhook_deliveries (id, url, body, signer, subject, state, attempts, next_attempt_at,"
            " claimed, created_at, finished_at) VALUES (?, ?, ?, 'standard', 'done', ?, ?, ?, ?, 3.0, ?)",
            [
                ("msg_sent", hook, b'{"old":"sent"}', "delivered", 1, None, 0, 3.2),
                ("msg_in_flight", hook, b'{"old":"in flight"}', "pending", 0, 9e9, 1, None),
            ],
        )
        conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms)"
            " VALUES ('msg_sent', 1, 3.1, 200, 12.5)"
        )


def test_the_previous_release_data_dir_upgrades_in_place(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with WebhookReceiver() as receiver:
        previous_release_data_dir(data_dir, receiver.url())
        app = create_app(Settings(data_dir=data_dir, sqlite_synchronous="NORMAL"))
        with serving(app) as url, httpx.Client(base_url=url, timeout=10) as http:
            done = http.get("/v1/requests/done").json()
            assert done["status"] == "COMPLETED" and done["input"] == {"seed": 7}
            assert done["result"]["seed"] == 7 and [line["message"] for line in done["logs"]] == [
                "step 4/4",
                "saved 1 image",
            ]
            deliveries = {d["id"]: d for d in http.get("/v1/requests/done/webhooks").json()["deliveries"]}
            assert deliveries["msg_sent"]["state"] == "delivered"
            assert [a["status_code"] for a in deliveries["msg_sent"]["attempts"]] == [200]
            # The claim its old sender held when it stopped is released: the webhook goes out again.
            (resent,) = receiver.wait_for("/hook")
            assert resent.body == b'{"old":"in flight"}'

            for job_id in ("queued", "orphan"):
                wait_until(lambda job_id=job_id: http.get(f"/v1/requests/{job_id}").json()["status"] == "COMPLETED")
            queued = http.get("/v1/predictions/queued").json()  # the Replicate view reads the moved fields
            assert queued["status"] == "succeeded"
            listed = [request["request_id"] for request in http.get("/v1/requests").json()["requests"]]
            assert listed == ["orphan", "queued", "done"]

    with sqlite3.connect(data_dir / "hidream.sqlite3") as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, LATEST + 1))
