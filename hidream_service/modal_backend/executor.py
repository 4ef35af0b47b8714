"""Dispatch by spawn: each queued job becomes one call of its model family's GPU function.

    submit ──► store ──► SpawnExecutor.submitted ──► Function.spawn(job_id) ──► FunctionCall fc-…
                               │                                                   │
                               └── spawned_calls: request id -> fc-…                ▼
                                              GPU container: run_spawned_job(job_id, holder=fc-…)

The call only carries the request id; the job itself (input, webhook, state) lives in the store,
so a re-run of the same input (Modal retries a preempted one) reads the same job, renders the same
seed and writes the same output keys and webhook-id.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hidream_service.jobs.model import Job, JobStatus
from hidream_service.jobs.service import JobService
from hidream_service.jobs.worker import Worker, job_logged
from hidream_service.modal_backend.calls import SpawnedCalls
from hidream_service.models.family import Endpoint

log = logging.getLogger(__name__)


class FunctionCallHandle(Protocol):
    """The part of modal.FunctionCall used here."""

    object_id: str

    def cancel(self, terminate_containers: bool = False) -> None: ...

    def get(self, timeout: float | None = None) -> Any: ...


#: Spawns the GPU (or CPU) function that runs jobs of this endpoint; returns its call.
Dispatch = Callable[[Endpoint, str], FunctionCallHandle]


class CallState(enum.Enum):
    RUNNING = "running"  # queued at Modal, or running in a container
    RETURNED = "returned"
    FAILED = "failed"  # raised after Modal's retries, never started (container start failed), or expired


class SpawnExecutor:
    def __init__(
        self,
        dispatch: Dispatch,
        calls: SpawnedCalls,
        call_from_id: Callable[[str], FunctionCallHandle],
        *,
        endpoints: Mapping[str, Endpoint],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dispatch = dispatch
        self.calls = calls
        self._call_from_id = call_from_id
        self._endpoints = endpoints
        self._clock = clock

    # -- Executor -------------------------------------------------------------------------------

    def submitted(self, job: Job) -> None:
        """Spawn the job's call. A failed spawn is logged, not raised: the job is already stored and
        answered, and the sweeper dispatches queued jobs that have no call."""
        try:
            call = self._dispatch(self._endpoints[job.endpoint], job.id)
        except Exception:
            log.exception("could not spawn a call for %s; the sweeper will try again", job.id)
            return
        self.calls.record(job.id, call.object_id, self._clock())

    def cancel_requested(self, job: Job) -> None:
        """A queued job's call is cancelled at once, so no container starts for it. A running one is
        left to its cancel flag, which its container's loop reads every heartbeat; `cancel_overdue`
        is the sweeper's backstop for a container that does not get to the next step."""
        if job.status is JobStatus.IN_QUEUE:
            self._cancel_call(job.id)
        else:
            self.calls.cancel_requested(job.id, self._clock())

    def batched(self, job_id: str) -> None:
        """A queued job was leased into another call's batch: its own call, still waiting at Modal,
        has nothing left to do, and cancelling it spares a container start."""
        self._cancel_call(job_id)

    def health(self) -> dict[str, Any]:
        return {"executor": "modal", "workers": "scale to zero"}

    # -- the sweeper's tools ---------------------------------------------------------------------

    def call_state(self, call_id: str) -> tuple[CallState, BaseException | None]:
        try:
            self._call_from_id(call_id).get(timeout=0)
        except TimeoutError:  # the built-in one: still pending. Modal's OutputExpiredError is not one.
            return CallState.RUNNING, None
        except Exception as exc:
            return CallState.FAILED, exc
        return CallState.RETURNED, None

    def cancel_overdue(self, job: Job, grace_seconds: float) -> bool:
        """Interrupt the call of a running job whose cancel was not honoured within `grace_seconds`:
        Modal raises InputCancellation in the call, which ends the job as cancelled. The container
        itself stays up (and warm) for the next job."""
        call_id = self.calls.take_overdue_cancel(job.id, self._clock() - grace_seconds)
        return call_id is not None and self._cancel(call_id, job.id)

    def _cancel_call(self, job_id: str) -> bool:
        call_id = self.calls.call_id(job_id)
        return call_id is not None and self._cancel(call_id, job_id)

    def _cancel(self, call_id: str, job_id: str) -> bool:
        try:
            self._call_from_id(call_id).cancel(terminate_containers=False)
        except Exception:
            log.exception("could not cancel call %s of %s", call_id, job_id)
            return False
        return True


def run_spawned_job(
    service: JobService,
    worker: Worker,
    job_id: str,
    holder: str,
    *,
    cancellations: tuple[type[BaseException], ...] = (),
) -> bool:
    """The body of a GPU function call: lease the job, run it, end it. False: nothing to run (the job
    ended, was cancelled, or another call holds it).

    `holder` is the FunctionCall id: a re-run of the same call after a preemption takes the job over,
    and renders the same outputs (seed and output keys come from the request id). An exception in
    `cancellations` (Modal's InputCancellation, raised mid-step by FunctionCall.cancel) ends the job
    as cancelled at once instead of when its lease runs out.
    """
    lease = service.lease(job_id, holder)
    if lease is None:
        log.info("%s: nothing to run (ended, or held by another call)", job_id)
        return False
    try:
        with job_logged(lease.job):
            worker.run_one(lease)
    except cancellations:
        service.acknowledge_cancel(lease)
        raise
    return True
