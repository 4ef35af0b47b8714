"""Everything a Modal container of this service builds, from Settings and the Modal handles.

Jobs, webhooks and signing keys live in the SQL store on Postgres (HIDREAM_DATABASE_URL, from a
Modal Secret), exactly as for several `hidream serve` nodes; each container is one node of it. Each
kind of container opens one ModalDeployment and takes its part:

    web (asgi)     web_runtime(): the Runtime for create_app, exactly the API of `hidream serve`;
                   other containers' changes reach its status streams through LISTEN/NOTIFY
    GPU / CPU job  job_worker(): a Worker that runs spawned jobs (executor.run_spawned_job)
    webhooks       send_due_webhooks(): attempts what is due, lingering for short retries
    sweeper        sweep(): recovers lost calls, re-dispatches, escalates cancels, prunes outputs

The handles are Modal's spawn, FunctionCall and Volume in production, in-process stand-ins in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hidream_service.api.state import Runtime
from hidream_service.config import Settings
from hidream_service.db.engine import Database
from hidream_service.db.listener import ClusterListener, NoticeHandlers
from hidream_service.db.schema import migrate
from hidream_service.jobs.events import JobEvents
from hidream_service.jobs.model import ErrorType
from hidream_service.jobs.service import JobService
from hidream_service.jobs.store import SqlJobStore
from hidream_service.jobs.worker import Runners, Worker
from hidream_service.modal_backend.calls import SpawnedCalls
from hidream_service.modal_backend.executor import CallState, Dispatch, FunctionCallHandle, SpawnExecutor
from hidream_service.modal_backend.storage import BucketOutputStorage, Volume, VolumeLoraCache, VolumeOutputStorage
from hidream_service.models.registry import DEFAULT_REGISTRY, Registry
from hidream_service.retention import RetentionSweep, Swept
from hidream_service.runtime import build_deliverer, job_service, store_runner, webhook_client
from hidream_service.signing_keys import SigningKeys
from hidream_service.storage import OutputStorage
from webhooks.outbox import SqlOutbox

log = logging.getLogger(__name__)

#: Store calls of one web container at once (its pool holds as many Postgres connections).
WEB_STORE_THREADS = 8
#: A job container wakes the webhook sender at most this often; one wake sends all that is due.
SENDER_WAKE_INTERVAL_SECONDS = 1.0


class NeedsPostgres(Exception):
    """On Modal every container is a node of one shared database: HIDREAM_DATABASE_URL must be Postgres."""


@dataclass(frozen=True)
class ModalHandles:
    outputs_dir: Path
    outputs: Volume | None  # None: a cloud bucket is mounted there, visible to all at once
    dispatch: Dispatch
    call_from_id: Callable[[str], FunctionCallHandle]
    send_webhooks: Callable[[], object]  # starts the CPU function that sends what is due
    loras_dir: Path | None = None  # where the LoRA files' Volume is mounted
    loras: Volume | None = None  # None: the LoRA cache is HIDREAM_LORA_CACHE_DIR, as on one machine


@dataclass(frozen=True)
class SweepReport:
    leases_recovered: int = 0
    dispatched: int = 0
    failed_unstarted: int = 0
    cancels_escalated: int = 0
    files_expired: int = 0
    webhook_attempts: int = 0


def lora_cache(settings: Settings, handles: ModalHandles) -> VolumeLoraCache | None:
    """The LoRA cache every container shares through the Volume; files a job container fetches
    stay on its own disk, under the data dir."""
    if handles.loras is None or handles.loras_dir is None:
        return None
    return VolumeLoraCache(
        handles.loras_dir, settings.lora_cache_bytes, handles.loras, settings.data_dir / "loras-fetched"
    )


def container_node_id() -> str:
    """This container's name as a node: Modal's task id, or a fresh one off Modal."""
    task = re.sub(r"[^A-Za-z0-9_-]", "-", os.environ.get("MODAL_TASK_ID", ""))[:40]
    return task or f"modal-{uuid.uuid4().hex[:12]}"


class ModalDeployment:
    def __init__(self, settings: Settings, handles: ModalHandles, registry: Registry = DEFAULT_REGISTRY) -> None:
        if not settings.shared_database:
            raise NeedsPostgres(
                "set HIDREAM_DATABASE_URL (or DATABASE_URL) to a postgresql:// URL in the hidream-database Modal"
                " Secret: every Modal container shares one database"
            )
        # Nothing here binds HIDREAM_HOST: Modal's proxy serves the app under its own host names, so the
        # Host check meant for a loopback bind would refuse them all (HIDREAM_ALLOWED_HOSTS still narrows it).
        settings = settings.model_copy(
            update={
                "node_id": settings.node_id or container_node_id(),
                "allowed_hosts": settings.allowed_hosts or ["*"],
            }
        )
        if settings.allow_private_urls is None:  # the loopback default means a bind, and nothing binds here
            settings = settings.model_copy(update={"allow_private_urls": False})
        self.settings = settings
        self.handles = handles
        self.registry = registry
        self.db = Database(settings.sql_url, node=settings.node_id or "", pool_size=WEB_STORE_THREADS)
        migrate(self.db)  # one query when the schema is current; nodes starting together upgrade it once
        self.store = SqlJobStore(self.db)
        self.outbox = SqlOutbox(self.db, holder=settings.node_id or "")
        self.calls = SpawnedCalls(self.db)
        self.executor = SpawnExecutor(handles.dispatch, self.calls, handles.call_from_id, endpoints=registry.endpoints)
        self.storage: OutputStorage = (
            BucketOutputStorage(handles.outputs_dir)
            if handles.outputs is None
            else VolumeOutputStorage(handles.outputs_dir, handles.outputs)
        )
        self.keys = SigningKeys.for_settings(settings, self.db)
        self.lora_cache = lora_cache(settings, handles)
        self._wake_sender = _Coalesced(self._start_sender, SENDER_WAKE_INTERVAL_SECONDS)

    def close(self) -> None:
        self._wake_sender.cancel()
        self.outbox.close()
        self.store.close()

    def _start_sender(self) -> None:
        try:
            self.handles.send_webhooks()
        except Exception:
            log.exception("could not start the webhook sender; the sweeper sends what is due")

    def service(
        self,
        on_changed: Callable[[str], None] = lambda job_id: None,
        on_queue_moved: Callable[[], None] = lambda: None,
        on_delivery_due: Callable[[], None] | None = None,
    ) -> JobService:
        return job_service(
            self.settings,
            self.store,
            self.registry,
            on_submitted=self.executor.submitted,
            on_changed=on_changed,
            on_queue_moved=on_queue_moved,
            on_cancel_requested=self.executor.cancel_requested,
            on_delivery_due=self._wake_sender if on_delivery_due is None else on_delivery_due,
        )

    # -- the web container -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def web_runtime(self) -> AsyncIterator[Runtime]:
        """The Runtime create_app serves from. Webhooks go out from the sender function; this one
        sends replays only. Jobs change in other containers: their NOTIFYs wake the watchers here."""
        loop = asyncio.get_running_loop()
        client = webhook_client(self.settings)
        threads = ThreadPoolExecutor(WEB_STORE_THREADS, thread_name_prefix="store")
        store_call = store_runner(loop, threads)
        events = JobEvents(loop)
        handlers = NoticeHandlers(
            queued=lambda: None,
            changed=events.notify_threadsafe,
            moved=events.queue_moved_threadsafe,
            delivery_due=lambda: None,
            keys=self.keys.reload,
            resync=events.notify_all_threadsafe,
        )
        listener = ClusterListener(self.settings.sql_url, self.settings.node_id or "", handlers)
        await asyncio.to_thread(listener.start)
        deliverer = build_deliverer(self.settings, self.outbox, self.keys, client, store_call)
        try:
            yield Runtime(
                service=self.service(on_changed=events.notify_threadsafe, on_queue_moved=events.queue_moved_threadsafe),
                storage=self.storage,
                events=events,
                executor=self.executor,
                keys=self.keys,
                outbox=self.outbox,
                deliverer=deliverer,
                store_call=store_call,
                lora_cache=self.lora_cache,
            )
        finally:
            await deliverer.abandon_in_flight()  # replays still sending: not made, as at any shutdown
            await asyncio.to_thread(listener.stop)
            await client.aclose()
            threads.shutdown(wait=True)

    # -- job containers --------------------------------------------------------------------------

    def runners(self) -> Runners:
        """What a job container runs jobs with: this deployment's families."""
        return Runners(self.settings, self.registry, lora_cache=self.lora_cache)

    def job_worker(self, name: str, runners: Runners) -> tuple[JobService, Worker]:
        service = self.service()
        worker = Worker(name, self.settings, service, runners, storage=self.storage, on_batched=self.executor.batched)
        return service, worker

    # -- CPU functions ---------------------------------------------------------------------------

    async def send_due_webhooks(self, linger: float) -> int:
        """Attempt every due delivery; wait here for retries due within `linger` seconds."""
        # This container hears no notices: a key rotated since it last ran is read here.
        await asyncio.to_thread(self.keys.reload)
        async with webhook_client(self.settings) as client:
            deliverer = build_deliverer(self.settings, self.outbox, self.keys, client)
            return await deliverer.run_until_idle(linger)

    def repair(self, *, undispatched_after: float, cancel_grace: float) -> SweepReport:
        """Put right what lost containers and lost spawns left behind. Safe to overlap with itself:
        every step is a conditional write that one sweep wins."""
        service = self.service(on_delivery_due=lambda: None)  # the sweep sends what is due itself
        recovered = service.recover_expired_leases() + self._recover_ended_calls(service)
        escalated = sum(
            self.executor.cancel_overdue(job, cancel_grace) for job in self.store.in_progress() if job.cancel_requested
        )
        dispatched = failed = 0
        now = time.time()
        for queued in self.calls.queued():
            job = queued.job
            if queued.call_id is None:
                if now - job.created_at >= undispatched_after:  # its submit died before the spawn
                    self.executor.submitted(job)
                    dispatched += 1
                continue
            state, error = self.executor.call_state(queued.call_id)
            if state is CallState.FAILED:
                reason = f"{type(error).__name__}: {error}" if error is not None else "unknown"
                failed += service.fail_unstarted(
                    job, ErrorType.WORKER_LOST, f"the container for this request failed before running it ({reason})"
                )
            elif state is CallState.RETURNED:  # its call ended without it (batched, then re-queued)
                self.executor.submitted(job)
                dispatched += 1
        return SweepReport(recovered, dispatched, failed, escalated)

    def _recover_ended_calls(self, service: JobService) -> int:
        """Running jobs whose call is over (its container was lost and Modal's retries are spent):
        recovered now rather than when their lease runs out."""
        recovered = 0
        for job in self.store.in_progress():
            holder = (self.store.lease_token(job.id) or "").rpartition(":")[0]
            if holder.startswith("fc-") and self.executor.call_state(holder)[0] is not CallState.RUNNING:
                service.recover_job(job)
                recovered += 1
        return recovered

    def _prune_outputs(self, retention: RetentionSweep) -> Swept | None:
        volume = self.handles.outputs
        if volume is not None:
            volume.reload()  # this container's view holds every file committed since it started
        swept = retention.run_once()
        if volume is not None and swept is not None and swept.directories:
            volume.commit()  # the removals reach the Volume
        return swept

    async def sweep(self, *, undispatched_after: float, cancel_grace: float) -> SweepReport:
        """One pass of the periodic sweeper: repairs, the retention of outputs, what is due."""
        report = await asyncio.to_thread(self.repair, undispatched_after=undispatched_after, cancel_grace=cancel_grace)
        retention = RetentionSweep(
            self.store,
            self.handles.outputs_dir,
            ttl_hours=self.settings.output_ttl_hours,
            holder=self.settings.node_id or "",
        )
        swept = await asyncio.to_thread(self._prune_outputs, retention)
        attempts = await self.send_due_webhooks(linger=0.0)
        report = SweepReport(
            report.leases_recovered,
            report.dispatched,
            report.failed_unstarted,
            report.cancels_escalated,
            0 if swept is None else swept.jobs,
            attempts,
        )
        log.info("sweep: %s", report)
        return report


class _Coalesced:
    """Calls `action` at most once per `interval`; a call inside the interval runs at its end."""

    def __init__(self, action: Callable[[], None], interval: float) -> None:
        self._action = action
        self._interval = interval
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._timer: threading.Timer | None = None

    def __call__(self) -> None:
        with self._lock:
            if self._timer is not None:
                return  # already due at the end of this interval
            wait = self._last + self._interval - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._run)
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = time.monotonic()
        self._action()

    def _run(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self._action()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
