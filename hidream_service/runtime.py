"""What every place the service runs builds from Settings: the job core wired to its dialects.

    job_service()       JobService whose endings are rendered by each job's dialect
    webhook_client()    the SSRF-guarded client every webhook attempt (and image fetch) goes through
    build_deliverer()   the Deliverer, signing with each delivery's dialect's signer
    embedded_runtime()  one machine: SQLite in the data dir, worker processes, delivery as a task

The server (server.py) and the Modal deployment (modal_backend/) both build from here, so the job
core (jobs/) never imports a dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx

from hidream_service.api.state import Runtime
from hidream_service.config import Settings
from hidream_service.dialects.registry import DialectEndings, webhook_signers
from hidream_service.jobs.events import JobEvents
from hidream_service.jobs.model import Job
from hidream_service.jobs.pool import LocalExecutor, WorkerPool
from hidream_service.jobs.protocols import JobStore
from hidream_service.jobs.service import JobService, build_service
from hidream_service.jobs.store import SqliteJobStore
from hidream_service.models.registry import Registry
from hidream_service.signing_keys import SigningKeys
from hidream_service.storage import LocalOutputStorage
from webhooks.delivery import Deliverer, RetrySchedule
from webhooks.outbox import Outbox, SqliteOutbox
from webhooks.ssrf import GuardedTransport

log = logging.getLogger("hidream_service")


class DataDirInUse(Exception):
    """Another server already runs on this data directory."""


@contextlib.contextmanager
def data_dir_lock(settings: Settings) -> Iterator[None]:
    """Held for a server's lifetime: one data dir, one server (its workers trust that)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "server.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUse(f"another hidream server is using {settings.data_dir}") from None
        yield


def job_service(
    settings: Settings,
    store: JobStore,
    registry: Registry,
    *,
    on_submitted: Callable[[Job], None],
    on_changed: Callable[[str], None],
    on_queue_moved: Callable[[], None] = lambda: None,
    on_cancel_requested: Callable[[Job], None] = lambda job: None,
) -> JobService:
    """The JobService of one process, its jobs' webhooks rendered by their dialects."""
    return build_service(
        settings,
        store,
        endings=DialectEndings(registry),
        on_submitted=on_submitted,
        on_changed=on_changed,
        on_queue_moved=on_queue_moved,
        on_cancel_requested=on_cancel_requested,
    )


def webhook_client(settings: Settings) -> httpx.AsyncClient:
    """The client every webhook attempt goes through: SSRF-guarded, never following redirects."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_private=settings.private_urls_allowed),
        follow_redirects=False,
        trust_env=False,
    )


def build_deliverer(settings: Settings, outbox: Outbox, keys: SigningKeys, client: httpx.AsyncClient) -> Deliverer:
    return Deliverer(
        outbox,
        webhook_signers(keys),
        RetrySchedule(settings.webhook_retry_schedule),
        client,
        timeout=settings.webhook_timeout_seconds,
        throttle_seconds=settings.webhook_throttle_seconds,
        max_concurrency=settings.webhook_max_concurrency,
    )


@contextlib.asynccontextmanager
async def embedded_runtime(
    settings: Settings, registry: Registry, *, start_workers: bool = True
) -> AsyncIterator[Runtime]:
    """One machine: SQLite in the data dir, worker processes, and the webhook deliverer as a task here."""
    with data_dir_lock(settings):
        keys = SigningKeys.for_settings(settings)
        store = SqliteJobStore(settings.database_path, synchronous=settings.sqlite_synchronous)
        outbox = SqliteOutbox(settings.database_path)
        client = webhook_client(settings)
        deliverer = build_deliverer(settings, outbox, keys, client)
        events = JobEvents(asyncio.get_running_loop(), on_change=deliverer.wake)
        executor = LocalExecutor()
        service = job_service(
            settings,
            store,
            registry,
            on_submitted=executor.submitted,
            on_changed=events.notify_threadsafe,
            on_queue_moved=events.queue_moved_threadsafe,
        )
        released = outbox.release_claims(time.time())
        if released:
            log.warning("%d webhook attempt(s) were in flight when the last server stopped; resending", released)
        recovered = service.recover_all_in_progress()
        if recovered:
            log.warning("recovered %d job(s) left running by a previous server", recovered)
        if start_workers:
            executor.pool = WorkerPool(
                settings,
                service,
                on_job_changed=events.notify_threadsafe,
                on_queue_moved=events.queue_moved_threadsafe,
                registry=registry,
                endings=DialectEndings(registry),
            )
            executor.pool.start()
        delivery_task = asyncio.create_task(deliverer.run_forever(), name="webhook-delivery")
        try:
            yield Runtime(
                service=service,
                storage=LocalOutputStorage(settings.outputs_dir),
                events=events,
                executor=executor,
                keys=keys,
                outbox=outbox,
                deliverer=deliverer,
            )
        finally:
            delivery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivery_task
            await deliverer.abandon_in_flight()
            if executor.pool is not None:
                await asyncio.to_thread(executor.pool.stop)
            await client.aclose()
            outbox.close()
            store.close()
