"""The job store contract, run against every store: SQL on SQLite (one machine) and on Postgres (many
nodes, and every container of the Modal deployment).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hidream_service.dialects.registry import DialectEndings
from hidream_service.jobs.model import ErrorType, JobRequest, JobStatus, Lease, LogLine, Progress
from hidream_service.jobs.protocols import JobStore
from hidream_service.jobs.service import CancelOutcome, IdempotencyKeyReused, JobService
from hidream_service.models.registry import DEFAULT_REGISTRY
from tests.sql_stores import sql_outbox, sql_store
from webhooks.outbox import Delivery, Outbox


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    store: JobStore
    outbox: Outbox
    reopen: Callable[[], JobStore]  # another process's view of the same data


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else f"sqlite:///{tmp_path}/jobs.db"
    opened = [sql_store(url)]

    def reopen() -> JobStore:
        opened.append(sql_store(url))
        return opened[-1]

    outbox = sql_outbox(url)
    yield Backend(opened[0], outbox, reopen)
    outbox.close()
    for store in opened:
        store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(backend: Backend, clock: Clock) -> JobService:
    return JobService(
        backend.store, endings=DialectEndings(DEFAULT_REGISTRY), lease_seconds=10, max_attempts=2, clock=clock
    )


def request(**overrides: object) -> JobRequest:
    fields: dict[str, object] = {
        "endpoint": "hidream/noop",
        "input": {"prompt": "x"},
        "webhook_url": "http://127.0.0.1:9/hook",
        "base_url": "http://testserver",
    }
    fields.update(overrides)
    return JobRequest(**fields)  # type: ignore[arg-type]


def deliveries(backend: Backend, job_id: str) -> list[Delivery]:
    return backend.outbox.for_subject(job_id)


def overtaken_run(service: JobService, clock: Clock) -> tuple[Lease, Lease]:
    """A job whose first run's lease ran out and was re-queued, and the second run that took it."""
    service.submit(request())
    first = service.lease_next("w1")
    assert first is not None
    clock.now += 11
    assert service.recover_expired_leases() == 1
    second = service.lease_next("w2")
    assert second is not None and second.job.id == first.job.id
    return first, second


def test_a_submitted_job_is_visible_to_another_process_at_once(service: JobService, backend: Backend) -> None:
    job, created = service.submit(request())

    seen = backend.reopen().get(job.id)
    assert created and seen is not None
    assert seen.status is JobStatus.IN_QUEUE and seen.queue_position == 0 and seen.input == {"prompt": "x"}


def test_an_id_no_store_can_hold_is_not_found(service: JobService, backend: Backend) -> None:
    service.submit(request())

    # Postgres text cannot hold NUL: a caller's `%00` in a URL is a request that does not exist.
    assert backend.store.get("job\x00id") is None and service.get("job\x00id", "") is None
    assert backend.outbox.get("msg\x00id") is None


def test_queue_positions_count_jobs_ahead(service: JobService) -> None:
    jobs = [service.submit(request())[0] for _ in range(3)]

    assert [job.queue_position for job in jobs] == [0, 1, 2]
    lease = service.lease_next("w")
    assert lease is not None and lease.job.id == jobs[0].id
    assert service.get(jobs[2].id, "").queue_position == 1  # type: ignore[union-attr]


def test_an_ending_and_its_webhook_are_written_together(service: JobService, backend: Backend) -> None:
    job, _ = service.submit(request())
    lease = service.lease_next("w")
    assert lease is not None

    assert service.complete(lease, {"images": []}, 0.5)
    (delivery,) = deliveries(backend, job.id)
    assert json.loads(delivery.body) == {
        "request_id": job.id,
        "gateway_request_id": job.id,
        "status": "OK",
        "payload": {"images": []},
        "error": None,
    }
    assert delivery.url == "http://127.0.0.1:9/hook" and delivery.state.value == "pending"
    ended = service.get(job.id, "")
    assert ended is not None and ended.succeeded and ended.result == {"images": []} and ended.inference_time == 0.5


def test_a_job_without_webhook_writes_no_delivery(service: JobService, backend: Backend) -> None:
    job, _ = service.submit(request(webhook_url=None))
    lease = service.lease_next("w")
    assert lease is not None
    service.complete(lease, {}, 0.1)

    assert deliveries(backend, job.id) == []


def test_a_stale_lease_cannot_overwrite_a_newer_outcome(service: JobService, clock: Clock) -> None:
    first, second = overtaken_run(service, clock)

    assert not service.complete(first, {"from": "old"}, 1.0)
    assert service.complete(second, {"from": "new"}, 1.0)
    assert service.get(first.job.id, "").result == {"from": "new"}  # type: ignore[union-attr]


def test_a_renewed_lease_does_not_expire(service: JobService, clock: Clock) -> None:
    service.submit(request())
    lease = service.lease_next("w")
    assert lease is not None
    clock.now += 8
    assert service.heartbeat(lease, []) == (True, False)
    clock.now += 8

    assert service.recover_expired_leases() == 0
    clock.now += 3
    assert service.recover_expired_leases() == 1


def test_a_job_that_keeps_killing_workers_is_failed(service: JobService, clock: Clock, backend: Backend) -> None:
    job, _ = service.submit(request())
    for holder in ("w1", "w2"):
        assert service.lease_next(holder) is not None
        clock.now += 11
        service.recover_expired_leases()

    ended = service.get(job.id, "")
    assert ended is not None and ended.status is JobStatus.COMPLETED
    assert ended.error_type is ErrorType.WORKER_LOST
    assert json.loads(deliveries(backend, job.id)[0].body)["status"] == "ERROR"


def test_recover_holder_requeues_at_once(service: JobService) -> None:
    job, _ = service.submit(request())
    assert service.lease_next("dead-worker") is not None

    assert service.recover_holder("dead-worker") == 1
    assert service.get(job.id, "").status is JobStatus.IN_QUEUE  # type: ignore[union-attr]
    assert service.recover_holder("other-worker") == 0


def test_cancel_queued_then_running_then_finished(service: JobService, backend: Backend) -> None:
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
    bodies = [json.loads(d.body) for job in (queued, running) for d in deliveries(backend, job.id)]
    assert [body["error"] for body in bodies] == ["Request was cancelled"] * 2


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


def test_a_job_that_ends_twice_sends_one_webhook_with_one_id(
    service: JobService, clock: Clock, backend: Backend
) -> None:
    first, second = overtaken_run(service, clock)
    job = second.job
    service.complete(second, {}, 0.1)
    service.complete(first, {}, 0.1)  # the stale run finishing late changes nothing

    assert [delivery.id for delivery in deliveries(backend, job.id)] == [f"msg_{job.id.replace('-', '')}"]


def test_a_named_job_is_leased_by_one_holder_and_retaken_only_by_the_same_one(service: JobService) -> None:
    job, _ = service.submit(request())
    first = service.lease(job.id, "fc-1")
    assert first is not None and first.job.attempts == 1

    assert service.lease(job.id, "fc-2") is None  # another call: the job is taken
    rerun = service.lease(job.id, "fc-1")  # the same call again, as after a preemption
    assert rerun is not None and rerun.job.attempts == 2
    assert not service.complete(first, {"from": "preempted run"}, 1.0)
    assert service.complete(rerun, {"from": "re-run"}, 1.0)
    assert service.lease(job.id, "fc-1") is None  # ended: nothing more to run


def test_logs_are_kept_in_order(service: JobService) -> None:
    job, _ = service.submit(request())
    lease = service.lease_next("w")
    assert lease is not None
    service.record(lease, [LogLine(1.0, "INFO", "step 1/2"), LogLine(2.0, "INFO", "step 2/2")])
    service.record(lease, [LogLine(3.0, "WARNING", "done")])

    seen = service.get(job.id, "", with_logs=True)
    assert seen is not None
    assert [(line.level, line.message) for line in seen.logs] == [
        ("INFO", "step 1/2"),
        ("INFO", "step 2/2"),
        ("WARNING", "done"),
    ]
    after_two = service.get(job.id, "", with_logs=True, logs_after=2)  # what a stream that gave two reads
    assert after_two is not None and [line.message for line in after_two.logs] == ["done"]
    past_the_end = service.get(job.id, "", with_logs=True, logs_after=3)
    assert past_the_end is not None and past_the_end.logs == []


def test_the_last_lines_are_written_with_the_ending_and_reach_its_webhook(
    service: JobService, backend: Backend
) -> None:
    job, _ = service.submit(request(dialect="replicate", webhook_events=("completed",)))
    lease = service.lease_next("w")
    assert lease is not None
    service.record(lease, [LogLine(1.0, "INFO", "step 1/1")])

    assert service.complete(lease, {"images": []}, 0.1, [LogLine(2.0, "INFO", "done")])
    seen = service.get(job.id, "", with_logs=True)
    assert seen is not None and [line.message for line in seen.logs] == ["step 1/1", "done"]
    (delivery,) = deliveries(backend, job.id)
    assert json.loads(delivery.body)["logs"].splitlines()[-2:] == ["step 1/1", "done"]


def test_a_run_that_lost_its_lease_keeps_its_lines_but_not_its_outcome(service: JobService, clock: Clock) -> None:
    first, _ = overtaken_run(service, clock)
    job = first.job

    assert not service.fail(first, ErrorType.INFERENCE, "late", logs=[LogLine(clock.now, "INFO", "late line")])
    seen = service.get(job.id, "", with_logs=True)
    assert seen is not None and seen.status is JobStatus.IN_PROGRESS
    assert [line.message for line in seen.logs] == ["late line"]


def progress_of(service: JobService, job_id: str) -> Progress | None:
    seen = service.get(job_id, "")
    assert seen is not None
    return seen.progress


def test_a_run_s_progress_is_its_own_and_stays_with_its_ending(service: JobService, clock: Clock) -> None:
    first, second = overtaken_run(service, clock)
    job_id = first.job.id

    service.record(first, [], Progress(9, 10))  # the run whose lease was taken away reports nothing more
    assert progress_of(service, job_id) is None  # and the new run starts without the old one's
    service.record(second, [], Progress(1, 4))
    assert progress_of(service, job_id) == Progress(1, 4)
    service.record(second, [], Progress(3, 4))
    assert service.complete(second, {"images": []}, 0.1)
    assert progress_of(service, job_id) == Progress(3, 4)


def test_a_re_queued_job_waits_without_progress(service: JobService, clock: Clock) -> None:
    service.submit(request())
    lease = service.lease_next("w1")
    assert lease is not None
    service.record(lease, [], Progress(2, 8))
    clock.now += 11
    assert service.recover_expired_leases() == 1

    assert progress_of(service, lease.job.id) is None


def test_pages_are_newest_first_per_owner_and_dialect(service: JobService, backend: Backend) -> None:
    mine = [service.submit(request(owner="a", dialect="replicate", input={"prompt": str(n)}))[0] for n in range(3)]
    service.submit(request(owner="b", dialect="replicate"))
    service.submit(request(owner="a", dialect="fal"))

    first_page = backend.store.page("a", "replicate", before_seq=None, limit=2)
    assert [job.id for job in first_page] == [mine[2].id, mine[1].id]
    rest = backend.store.page("a", "replicate", before_seq=first_page[-1].seq, limit=2)
    assert [job.id for job in rest] == [mine[0].id]


def test_a_progress_event_is_sent_once_and_not_retried(service: JobService, backend: Backend) -> None:
    job, _ = service.submit(request(dialect="replicate", webhook_events=("start", "completed")))
    assert service.lease_next("w") is not None

    (started,) = deliveries(backend, job.id)
    assert started.single_attempt and json.loads(started.body)["status"] == "processing"


def test_batch_mates_are_queued_jobs_of_the_same_endpoint_that_match(service: JobService) -> None:
    first, _ = service.submit(request(input={"prompt": "a", "steps": 2}))
    same = [service.submit(request(input={"prompt": p, "steps": 2}))[0] for p in ("b", "c", "d")]
    other_steps, _ = service.submit(request(input={"prompt": "e", "steps": 3}))
    other_endpoint, _ = service.submit(request(endpoint="fal-ai/hidream-i1-fast", input={"prompt": "f", "steps": 2}))
    lease = service.lease_next("w")
    assert lease is not None and lease.job.id == first.id

    mates = service.lease_batch_mates(lease, "w", lambda job: job.input["steps"] == 2, limit=2)

    assert [mate.job.id for mate in mates] == [same[0].id, same[1].id]  # oldest first, up to the limit
    assert all(mate.job.status is JobStatus.IN_PROGRESS and mate.token != lease.token for mate in mates)
    left = {job.id for job in (same[2], other_steps, other_endpoint)}
    assert {job.id for job in (service.get(i, "") for i in left) if job and job.status is JobStatus.IN_QUEUE} == left
