"""Everything a Modal container of this service builds, from Settings and the Modal handles.

Each kind of container opens the same ModalDeployment and takes its part:

    web (asgi)     web_runtime(): the Runtime for create_app, exactly the API of `hidream serve`
    GPU / CPU job  job_worker(): a Worker that runs one spawned job (executor.run_spawned_job)
    webhooks       send_due_webhooks(): attempts what is due, lingering for short retries
    sweeper        sweep(): repairs, recovers, re-dispatches, escalates cancels, sends what is due

The handles are modal.Dict / modal.Volume / spawn in production, in-process stand-ins in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from hidream_service.api.state import Runtime
from hidream_service.config import Settings
from hidream_service.jobs.events import JobEvents
from hidream_service.jobs.model import ErrorType, JobStatus
from hidream_service.jobs.service import JobService
from hidream_service.jobs.worker import Runners, Worker
from hidream_service.modal_backend.executor import CallState, Dispatch, FunctionCallHandle, SpawnExecutor
from hidream_service.modal_backend.job_store import DictJobStore
from hidream_service.modal_backend.keys import DictKeyState
from hidream_service.modal_backend.kv import KeyValueStore
from hidream_service.modal_backend.outbox import DictOutbox
from hidream_service.modal_backend.storage import Volume, VolumeOutputStorage
from hidream_service.models.registry import DEFAULT_REGISTRY, Registry
from hidream_service.runtime import build_deliverer, job_service, webhook_client
from hidream_service.signing_keys import SigningKeys

log = logging.getLogger(__name__)

#: Jobs end in other containers, so status streams and synchronous waits re-read this often.
STATUS_POLL_SECONDS = 1.0


class MissingWebhookSecret(Exception):
    """On Modal every container must sign with one secret: HIDREAM_WEBHOOK_SECRET must be set."""


@dataclass(frozen=True)
class ModalHandles:
    jobs: KeyValueStore
    active: KeyValueStore
    listing: KeyValueStore
    deliveries: KeyValueStore
    due: KeyValueStore
    runtime: KeyValueStore  # call ids, cancel times, signing keys
    outputs: Volume
    outputs_dir: Path
    dispatch: Dispatch
    call_from_id: Callable[[str], FunctionCallHandle]
    send_webhooks: Callable[[], object]  # starts the CPU function that sends what is due


@dataclass(frozen=True)
class SweepReport:
    endings_repaired: int = 0
    leases_recovered: int = 0
    dispatched: int = 0
    failed_unstarted: int = 0
    cancels_escalated: int = 0
    webhook_attempts: int = 0


class ModalDeployment:
    def __init__(self, settings: Settings, handles: ModalHandles, registry: Registry = DEFAULT_REGISTRY) -> None:
        if not settings.webhook_secret:
            raise MissingWebhookSecret(
                "set HIDREAM_WEBHOOK_SECRET (whsec_...) in the Modal Secret: every container signs with it"
            )
        self.settings = settings
        self.handles = handles
        self.registry = registry
        self.outbox = DictOutbox(handles.deliveries, handles.due, on_enqueued=self._delivery_enqueued)
        self.store = DictJobStore(handles.jobs, handles.active, handles.listing, self.outbox)
        self.executor = SpawnExecutor(
            handles.dispatch, handles.runtime, handles.call_from_id, endpoints=registry.endpoints
        )
        self.storage = VolumeOutputStorage(handles.outputs_dir, handles.outputs)
        self.keys = SigningKeys(
            DictKeyState(handles.runtime),
            pinned_secret=settings.webhook_secret,
            grace_seconds=settings.webhook_rotation_grace_seconds,
        )

    def _delivery_enqueued(self, delivery_id: str) -> None:
        try:
            self.handles.send_webhooks()
        except Exception:
            log.exception("could not start the webhook sender for %s; the sweeper will send it", delivery_id)

    def service(
        self,
        on_changed: Callable[[str], None] = lambda job_id: None,
        on_queue_moved: Callable[[], None] = lambda: None,
    ) -> JobService:
        return job_service(
            self.settings,
            self.store,
            self.registry,
            on_submitted=self.executor.submitted,
            on_changed=on_changed,
            on_queue_moved=on_queue_moved,
            on_cancel_requested=self.executor.cancel_requested,
        )

    # -- the web container -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def web_runtime(self) -> AsyncIterator[Runtime]:
        """The Runtime create_app serves from. Webhooks are sent elsewhere; this one only replays."""
        client = webhook_client(self.settings)
        events = JobEvents(asyncio.get_running_loop())
        ticker = asyncio.create_task(_tick(events), name="status-poll")
        try:
            yield Runtime(
                service=self.service(on_changed=events.notify_threadsafe, on_queue_moved=events.queue_moved_threadsafe),
                storage=self.storage,
                events=events,
                executor=self.executor,
                keys=self.keys,
                outbox=self.outbox,
                deliverer=build_deliverer(self.settings, self.outbox, self.keys, client),
            )
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await client.aclose()

    # -- job containers --------------------------------------------------------------------------

    def runners(self) -> Runners:
        """What a job container runs jobs with: this deployment's families."""
        return Runners(self.settings, self.registry)

    def job_worker(self, name: str, runners: Runners) -> tuple[JobService, Worker]:
        service = self.service()
        return service, Worker(name, self.settings, service, runners, storage=self.storage)

    # -- CPU functions ---------------------------------------------------------------------------

    async def send_due_webhooks(self, linger: float) -> int:
        """Attempt every due delivery; wait here for retries due within `linger` seconds."""
        async with webhook_client(self.settings) as client:
            deliverer = build_deliverer(self.settings, self.outbox, self.keys, client)
            return await deliverer.run_until_idle(linger)

    async def sweep(self, *, undispatched_after: float, cancel_grace: float) -> SweepReport:
        """One pass over everything not yet finished. Idempotent: sweeps may overlap."""
        service = self.service()
        repaired = self.store.repair_endings()
        recovered = service.recover_expired_leases()
        dispatched = failed = escalated = 0
        now = time.time()
        for job in self.store.unfinished():
            if job.status is JobStatus.IN_PROGRESS:
                if job.cancel_requested:
                    escalated += self.executor.cancel_overdue(job, cancel_grace)
                continue
            call_id = self.executor.call_id(job.id)
            if call_id is None:
                if now - job.created_at >= undispatched_after:  # its submit died before the spawn
                    self.executor.submitted(job)
                    dispatched += 1
                continue
            state, error = self.executor.call_state(call_id)
            if state is CallState.FAILED:
                reason = f"{type(error).__name__}: {error}" if error is not None else "unknown"
                failed += service.fail_unstarted(
                    job, ErrorType.WORKER_LOST, f"the container for this request failed before running it ({reason})"
                )
            elif state is CallState.RETURNED:  # its call ended without it; it was re-queued since
                self.executor.submitted(job)
                dispatched += 1
        attempts = await self.send_due_webhooks(linger=0.0)
        report = SweepReport(repaired, recovered, dispatched, failed, escalated, attempts)
        log.info("sweep: %s", report)
        return report


async def _tick(events: JobEvents) -> None:
    while True:
        await asyncio.sleep(STATUS_POLL_SECONDS)
        events.notify_all_threadsafe()  # jobs end in other containers: every watcher re-reads its own
