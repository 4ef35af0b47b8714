"""The state machine, on a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hidream_service.jobs.model import ErrorType, JobRequest, JobStatus
from hidream_service.jobs.service import CancelOutcome, IdempotencyKeyReused, JobService
from hidream_service.jobs.store import SqliteJobStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteJobStore]:
    opened = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def service(store: SqliteJobStore, clock: Clock) -> JobService:
    return JobService(store, lease_seconds=10, max_attempts=2, clock=clock)


def request(**overrides: object) -> JobRequest:
    fields: dict[str, object] = {
        "endpoint": "hidream/noop",
        "input": {"prompt": "x"},
        "webhook_url": "http://127.0.0.1:9/hook",
        "base_url": "http://testserver",
    }
    fields.update(overrides)
    return JobRequest(**fields)  # type: ignore[arg-type]


def outbox(path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(path / "jobs.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM webhook_deliveries").fetchall()


def test_submit_persists_before_returning(service: JobService, tmp_path: Path) -> None:
    job, created = service.submit(request())

    with sqlite3.connect(tmp_path / "jobs.sqlite3") as other_connection:
        (status,) = other_connection.execute("SELECT status FROM jobs WHERE id = ?", (job.id,)).fetchone()
    assert created and status == "IN_QUEUE"
    assert job.queue_position == 0


def test_queue_positions_count_jobs_ahead(service: JobService) -> None:
    jobs = [service.submit(request())[0] for _ in range(3)]

    assert [job.queue_position for job in jobs] == [0, 1, 2]
    lease = service.lease_next("w")
    assert lease is not None and lease.job.id == jobs[0].id
    assert service.get(jobs[2].id, "").queue_position == 1  # type: ignore[union-attr]


def test_completion_writes_the_webhook_in_the_same_transaction(service: JobService, tmp_path: Path) -> None:
    job, _ = service.submit(request())
    lease = service.lease_next("w")
    assert lease is not None

    assert service.complete(lease, {"images": []}, 0.5)
    (row,) = outbox(tmp_path)
    body = json.loads(row["body"])
    assert body == {
        "request_id": job.id,
        "gateway_request_id": job.id,
        "status": "OK",
        "payload": {"images": []},
        "error": None,
    }
    assert row["url"] == "http://127.0.0.1:9/hook"
    assert row["state"] == "pending"


def test_a_job_without_webhook_writes_no_delivery(service: JobService, tmp_path: Path) -> None:
    service.submit(request(webhook_url=None))
    lease = service.lease_next("w")
    assert lease is not None
    service.complete(lease, {}, 0.1)

    assert outbox(tmp_path) == []


def test_a_stale_lease_cannot_overwrite_a_newer_outcome(service: JobService, clock: Clock) -> None:
    service.submit(request())
    first = service.lease_next("w1")
    assert first is not None
    clock.now += 11
    service.recover_expired_leases()
    second = service.lease_next("w2")
    assert second is not None and second.job.id == first.job.id

    assert not service.complete(first, {"from": "old"}, 1.0)
    assert service.complete(second, {"from": "new"}, 1.0)
    assert service.get(first.job.id, "").result == {"from": "new"}  # type: ignore[union-attr]


def test_a_job_that_keeps_killing_workers_is_failed(service: JobService, clock: Clock, tmp_path: Path) -> None:
    job, _ = service.submit(request())
    for holder in ("w1", "w2"):
        assert service.lease_next(holder) is not None
        clock.now += 11
        service.recover_expired_leases()

    ended = service.get(job.id, "")
    assert ended is not None and ended.status is JobStatus.COMPLETED
    assert ended.error_type is ErrorType.WORKER_LOST
    assert json.loads(outbox(tmp_path)[0]["body"])["status"] == "ERROR"


def test_recover_holder_requeues_at_once(service: JobService) -> None:
    job, _ = service.submit(request())
    assert service.lease_next("dead-worker") is not None

    assert service.recover_holder("dead-worker") == 1
    assert service.get(job.id, "").status is JobStatus.IN_QUEUE  # type: ignore[union-attr]
    assert service.recover_holder("other-worker") == 0


def test_cancel_queued_then_running_then_finished(service: JobService, tmp_path: Path) -> None:
    queued, _ = service.submit(request())
    running, _ = service.submit(request(input={"prompt": "y"}))
    assert service.cancel(queued.id, "") is CancelOutcome.CANCELLED
    lease = service.lease_next("w")
    assert lease is not None and lease.job.id == running.id

    assert service.cancel(running.id, "") is CancelOutcome.CANCELLATION_REQUESTED
    assert service.heartbeat(lease, []) == (True, True)
    assert service.acknowledge_cancel(lease)
    assert service.cancel(running.id, "") is CancelOutcome.ALREADY_COMPLETED
    assert service.cancel("missing", "") is CancelOutcome.NOT_FOUND
    assert {json.loads(row["body"])["error"] for row in outbox(tmp_path)} == {"Request was cancelled"}


def test_a_dead_worker_with_a_cancel_pending_ends_cancelled(service: JobService, clock: Clock) -> None:
    job, _ = service.submit(request())
    assert service.lease_next("w") is not None
    service.cancel(job.id, "")
    clock.now += 11
    service.recover_expired_leases()

    assert service.get(job.id, "").status is JobStatus.CANCELLED  # type: ignore[union-attr]


def test_idempotency_same_request_same_job_other_request_rejected(service: JobService) -> None:
    first, created = service.submit(request(idempotency_key="k"))
    again, created_again = service.submit(request(idempotency_key="k"))

    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyKeyReused):
        service.submit(request(idempotency_key="k", input={"prompt": "different"}))
    other_owner, created_other = service.submit(request(idempotency_key="k", owner="someone-else"))
    assert created_other and other_owner.id != first.id


def test_jobs_are_invisible_to_other_owners(service: JobService) -> None:
    job, _ = service.submit(request(owner="alice"))

    assert service.get(job.id, "bob") is None
    assert service.cancel(job.id, "bob") is CancelOutcome.NOT_FOUND
    assert service.get(job.id, "alice") is not None


def test_webhook_id_is_the_same_when_a_job_ends_twice(service: JobService, clock: Clock, tmp_path: Path) -> None:
    service.submit(request())
    first = service.lease_next("w1")
    assert first is not None
    clock.now += 11
    service.recover_expired_leases()
    second = service.lease_next("w2")
    assert second is not None
    service.complete(second, {}, 0.1)
    service.complete(first, {}, 0.1)  # the stale run finishing late changes nothing

    assert len(outbox(tmp_path)) == 1
