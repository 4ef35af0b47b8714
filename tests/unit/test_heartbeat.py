"""The worker's heartbeat thread on a real SQLite store: it keeps a long run's lease, flushes its
events (log lines, progress) while it runs, passes a cancel on, and lets go of a run the moment the
run ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hidream_service.config import Settings
from hidream_service.jobs import worker as worker_module
from hidream_service.jobs.model import JobRequest, Lease, Progress
from hidream_service.jobs.service import JobService
from hidream_service.jobs.worker import Heartbeat, WorkerRunContext
from hidream_service.models.registry import DEFAULT_REGISTRY
from hidream_service.runtime import job_service
from hidream_service.safety import SafetyChecker
from hidream_service.storage import LocalOutputStorage
from tests.sql_stores import sql_store

LEASE = 0.6


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, lease_seconds=LEASE, heartbeat_seconds=0.03)


@pytest.fixture
def service(settings: Settings) -> JobService:
    store = sql_store(settings.sql_url)
    return job_service(settings, store, DEFAULT_REGISTRY, on_submitted=lambda job: None, on_changed=lambda job_id: None)


def running_job(service: JobService, settings: Settings) -> tuple[Lease, WorkerRunContext]:
    job, _ = service.submit(JobRequest(endpoint="hidream/noop", input={}, base_url="http://testserver"))
    lease = service.lease_next("w")
    assert lease is not None and lease.job.id == job.id
    ctx = WorkerRunContext(job.id, "http://testserver", LocalOutputStorage(settings.outputs_path), SafetyChecker(1.0))
    return lease, ctx


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def logged(service: JobService, job_id: str) -> list[str]:
    job = service.get(job_id, "", with_logs=True)
    assert job is not None
    return [line.message for line in job.logs]


def test_a_run_longer_than_its_lease_keeps_it_and_its_lines_show_while_it_runs(
    service: JobService, settings: Settings
) -> None:
    heartbeat = Heartbeat(service, settings)
    lease, ctx = running_job(service, settings)

    with heartbeat.holding([(lease, ctx)]):
        ctx.progress(1, 2)
        wait_until(lambda: logged(service, lease.job.id) == ["step 1/2"])
        running = service.get(lease.job.id, "")
        assert running is not None and running.progress == Progress(1, 2)
        time.sleep(2.5 * LEASE)
        assert service.recover_expired_leases() == 0  # renewed every lease/3
        assert heartbeat.held() == [lease.job.id]

    assert heartbeat.held() == []
    time.sleep(1.5 * LEASE)
    assert service.recover_expired_leases() == 1  # let go: nobody renews it once the run is over


def test_a_cancel_reaches_the_run(service: JobService, settings: Settings) -> None:
    heartbeat = Heartbeat(service, settings)
    lease, ctx = running_job(service, settings)

    with heartbeat.holding([(lease, ctx)]):
        assert not ctx.cancelled()
        service.cancel(lease.job.id, "")
        wait_until(ctx.cancelled)


def test_one_thread_serves_run_after_run_and_ends_when_idle(
    service: JobService, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "HEARTBEAT_IDLE_SECONDS", 0.2)
    heartbeat = Heartbeat(service, settings)
    threads = set()
    for _ in range(3):
        lease, ctx = running_job(service, settings)
        with heartbeat.holding([(lease, ctx)]):
            threads.add(heartbeat.running())
        assert service.complete(lease, {}, 0.0)

    assert len(threads) == 1 and None not in threads
    wait_until(lambda: heartbeat.running() is None)
    lease, ctx = running_job(service, settings)
    with heartbeat.holding([(lease, ctx)]):  # the next run starts it again
        assert heartbeat.running() not in (None, *threads)
        service.cancel(lease.job.id, "")
        wait_until(ctx.cancelled)


def test_a_run_whose_lease_is_gone_is_let_go(service: JobService, settings: Settings) -> None:
    heartbeat = Heartbeat(service, settings)
    lease, ctx = running_job(service, settings)

    with heartbeat.holding([(lease, ctx)]):
        assert service.complete(lease, {}, 0.0)  # as if by another holder
        wait_until(lambda: heartbeat.held() == [])
        assert ctx.cancelled()  # the run is told to stop
