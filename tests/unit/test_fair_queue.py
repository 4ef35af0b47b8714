"""The queue is fair between API keys, on SQLite and on Postgres: keys with queued jobs take turns at
the workers, a queued job's position says when its turn comes, and a key's queue limit holds under
concurrent submits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hidream_service.dialects.registry import DialectEndings
from hidream_service.jobs.model import Job, JobRequest
from hidream_service.jobs.service import JobService
from hidream_service.jobs.store import QueueFull, SqlJobStore
from hidream_service.models.registry import DEFAULT_REGISTRY
from tests.sql_stores import ENGINES, sql_store


class Clock:
    """Each reading a second later than the one before: leases are told apart by when they began."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlJobStore]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else f"sqlite:///{tmp_path}/jobs.db"
    opened = sql_store(url)
    yield opened
    opened.close()


def service_over(store: SqlJobStore, *, max_queued: int = 0) -> JobService:
    return JobService(store, endings=DialectEndings(DEFAULT_REGISTRY), max_queued_per_owner=max_queued, clock=Clock())


def submit(service: JobService, owner: str, prompt: str = "x") -> Job:
    job, _ = service.submit(JobRequest(endpoint="hidream/noop", input={"prompt": prompt}, owner=owner))
    return job


def queue_position(store: SqlJobStore, job: Job) -> int | None:
    now = store.get(job.id)
    assert now is not None
    return now.queue_position


def lease_all(service: JobService) -> list[str]:
    order = []
    while (lease := service.lease_next("w")) is not None:
        order.append(lease.job.input["prompt"])
    return order


def test_keys_with_queued_jobs_take_turns_and_positions_say_when(store: SqlJobStore) -> None:
    service = service_over(store)
    jobs = [
        submit(service, owner, f"{owner}{n}") for owner, count in (("a", 4), ("b", 2), ("c", 1)) for n in range(count)
    ]
    positions = {job.input["prompt"]: queue_position(store, job) for job in jobs}

    order = lease_all(service)

    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    assert positions == {prompt: order.index(prompt) for prompt in order}


def test_a_key_served_last_waits_behind_a_key_that_just_joined(store: SqlJobStore) -> None:
    service = service_over(store)
    for n in range(1, 11):
        submit(service, "a", f"a{n}")
    assert service.lease_next("w") is not None  # a1 runs: key a was served last
    latecomer = submit(service, "b", "b1")

    assert latecomer.queue_position == 0
    assert lease_all(service)[:2] == ["b1", "a2"]


def test_a_key_at_its_limit_is_refused_until_one_of_its_jobs_starts(store: SqlJobStore) -> None:
    service = service_over(store, max_queued=2)
    submit(service, "a")
    submit(service, "a")

    with pytest.raises(QueueFull):
        submit(service, "a")
    submit(service, "b")  # another key's queue is its own
    assert service.lease_next("w") is not None  # one of a's starts: a place is free again
    submit(service, "a")


def test_concurrent_submits_never_pass_the_limit(store: SqlJobStore) -> None:
    service = service_over(store, max_queued=3)
    start = threading.Barrier(12)
    outcomes: list[str] = []

    def submit_at_once() -> None:
        start.wait()
        try:
            submit(service, "a")
            outcomes.append("queued")
        except QueueFull:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit_at_once) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == ["queued"] * 3 + ["refused"] * 9
    assert len(lease_all(service)) == 3
