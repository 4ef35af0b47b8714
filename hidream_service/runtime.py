"""What every place the service runs builds from Settings: the job core wired to its dialects.

    job_service()       JobService whose endings are rendered by each job's dialect
    webhook_client()    the SSRF-guarded client every webhook attempt (and image fetch) goes through
    build_deliverer()   the Deliverer, signing with each delivery's dialect's signer
    embedded_runtime()  a `hidream serve` node: its SQL store (SQLite in the data dir, or Postgres
                        shared with other nodes), worker processes, delivery and retention as tasks

The server (server.py) and the Modal deployment (modal_backend/) both build from here, so the job
core (jobs/) never imports a dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import httpx

from hidream_service.api.state import Runtime, StoreCall
from hidream_service.config import Settings
from hidream_service.db.engine import Database
from hidream_service.db.listener import ClusterListener, NoticeHandlers
from hidream_service.db.schema import migrate
from hidream_service.dialects.registry import DIALECTS, DialectEndings, webhook_signers
from hidream_service.jobs.events import JobEvents
from hidream_service.jobs.model import Job
from hidream_service.jobs.pool import LocalExecutor, WorkerPool
from hidream_service.jobs.protocols import JobStore
from hidream_service.jobs.reports import Report
from hidream_service.jobs.service import JobService, build_service
from hidream_service.jobs.store import open_store
from hidream_service.metrics import Metrics
from hidream_service.models.registry import Registry
from hidream_service.retention import RetentionSweep
from hidream_service.signing_keys import SigningKeys
from hidream_service.storage import LocalOutputStorage
from webhooks.delivery import AttemptObserver, Deliverer, RetrySchedule
from webhooks.outbox import Outbox, SqlOutbox
from webhooks.ssrf import GuardedTransport

log = logging.getLogger("hidream_service")
P = ParamSpec("P")
T = TypeVar("T")


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


NODE_FILE = "node_id"


def database_problem(settings: Settings) -> str | None:
    """Why the shared database cannot be used, asked before start-up so that the answer is one
    clear line rather than a failed start; None when it can (or when it is SQLite in the data dir)."""
    if not settings.shared_database:
        return None
    import psycopg
    from sqlalchemy.engine import make_url

    from hidream_service.db.engine import libpq_url

    assert settings.database_url is not None
    try:
        with psycopg.connect(libpq_url(settings.database_url), connect_timeout=10):
            return None
    except psycopg.Error as exc:
        shown = make_url(settings.database_url).render_as_string(hide_password=True)
        return f"cannot reach the database {shown}: {str(exc).strip()} (HIDREAM_DATABASE_URL)"


def node_settings(settings: Settings) -> Settings:
    """Settings with this node's name filled in: HIDREAM_NODE_ID, or a name made once and kept in
    the data dir (a restarted node knows its own leases and claims by it)."""
    if settings.node_id is not None:
        return settings
    path = settings.data_dir / NODE_FILE
    if not path.is_file():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(f"node-{uuid.uuid4().hex[:12]}\n")
    return settings.model_copy(update={"node_id": path.read_text().strip()})


def job_service(
    settings: Settings,
    store: JobStore,
    registry: Registry,
    *,
    on_submitted: Callable[[Job], None],
    on_changed: Callable[[str], None],
    on_queue_moved: Callable[[], None] = lambda: None,
    on_cancel_requested: Callable[[Job], None] = lambda job: None,
    on_delivery_due: Callable[[], None] = lambda: None,
    on_report: Callable[[Report], None] = lambda report: None,
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
        on_delivery_due=on_delivery_due,
        on_report=on_report,
    )


def webhook_client(settings: Settings) -> httpx.AsyncClient:
    """The client every webhook attempt goes through: SSRF-guarded, never following redirects."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_private=settings.private_urls_allowed),
        follow_redirects=False,
        trust_env=False,
    )


def build_deliverer(
    settings: Settings,
    outbox: Outbox,
    keys: SigningKeys,
    client: httpx.AsyncClient,
    store_call: StoreCall = asyncio.to_thread,
    on_attempt: AttemptObserver = lambda delivery, outcome: None,
) -> Deliverer:
    return Deliverer(
        outbox,
        webhook_signers(keys),
        RetrySchedule(settings.webhook_retry_schedule),
        client,
        timeout=settings.webhook_timeout_seconds,
        throttle_seconds=settings.webhook_throttle_seconds,
        max_concurrency=settings.webhook_max_concurrency,
        max_per_destination=settings.webhook_max_per_host,
        blocking=store_call,
        on_attempt=on_attempt,
    )


@contextlib.asynccontextmanager
async def embedded_runtime(
    settings: Settings, registry: Registry, *, start_workers: bool = True
) -> AsyncIterator[Runtime]:
    """A `hidream serve` node: its store (SQLite in the data dir, or the Postgres it shares with
    other nodes), worker processes, and the webhook deliverer and retention sweep as tasks here."""
    with data_dir_lock(settings):
        settings = node_settings(settings)
        node = settings.node_id or ""
        store = open_store(settings)
        store_thread = ThreadPoolExecutor(store_threads(settings), thread_name_prefix="store")
        store_call = store_runner(asyncio.get_running_loop(), store_thread)
        applied = await asyncio.to_thread(migrate, store.db)
        if applied:
            log.info("database schema upgraded (migrations %s)", ", ".join(map(str, applied)))
        shared = settings.shared_database
        keys = await asyncio.to_thread(SigningKeys.for_settings, settings, store.db if shared else None)
        # On SQLite the outbox commits through connections of its own that do not force the disk.
        outbox = SqlOutbox(store.db if shared else Database(settings.sql_url, synchronous="NORMAL"), holder=node)
        client = webhook_client(settings)
        executor = LocalExecutor()
        metrics = Metrics(
            endpoints=registry.endpoints,
            dialects=[dialect.id for dialect in DIALECTS],
            models=registry.models,
            store=store,
            outbox=outbox,
            workers_alive=lambda: executor.pool.alive() if executor.pool is not None else 0,
            node=node,
        )
        deliverer = build_deliverer(settings, outbox, keys, client, store_call, metrics.observe_attempt)
        events = JobEvents(asyncio.get_running_loop(), on_delivery_due=deliverer.wake)
        service = job_service(
            settings,
            store,
            registry,
            on_submitted=executor.submitted,
            on_changed=events.notify_threadsafe,
            on_queue_moved=events.queue_moved_threadsafe,
            on_delivery_due=events.delivery_due_threadsafe,
            on_report=metrics.record,
        )
        listener = await asyncio.to_thread(_listen_to_other_nodes, settings, executor, events, keys) if shared else None
        released = await asyncio.to_thread(outbox.release_claims, time.time())
        if released:
            log.warning("%d webhook attempt(s) were in flight when this node last stopped; resending", released)

        def recover_orphans() -> int:
            # SQLite: this is the only node, so every running job is an orphan. Postgres: only this
            # node's are; other nodes' jobs are theirs, and a dead node's leases run out and are
            # recovered by whichever node sees that first.
            return service.recover_holder(node) if shared else service.recover_all_in_progress()

        recovered = await asyncio.to_thread(recover_orphans)
        if recovered:
            log.warning("recovered %d job(s) left running when this node last stopped", recovered)
        if start_workers:
            executor.pool = WorkerPool(
                settings,
                service,
                on_job_changed=events.notify_threadsafe,
                on_queue_moved=events.queue_moved_threadsafe,
                on_delivery_due=events.delivery_due_threadsafe,
                registry=registry,
                endings=DialectEndings(registry),
                on_report=metrics.record,
            )
            executor.pool.start()
        sweep = RetentionSweep(store, settings.outputs_path, ttl_hours=settings.output_ttl_hours, holder=node)
        tasks = [
            asyncio.create_task(deliverer.run_forever(), name="webhook-delivery"),
            asyncio.create_task(_sweep_forever(sweep), name="retention"),
        ]
        try:
            yield Runtime(
                service=service,
                storage=LocalOutputStorage(settings.outputs_path),
                events=events,
                executor=executor,
                keys=keys,
                outbox=outbox,
                deliverer=deliverer,
                store_call=store_call,
                metrics=metrics,
            )
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await deliverer.abandon_in_flight()
            if listener is not None:
                await asyncio.to_thread(listener.stop)
            if executor.pool is not None:
                await asyncio.to_thread(executor.pool.stop)
            await client.aclose()
            store_thread.shutdown(wait=True)
            outbox.close()
            store.close()


def store_threads(settings: Settings) -> int:
    """Threads for the API's store calls, apart from file and image work (an image decode never
    delays a status read). SQLite: two; its writes go one at a time anyway, and a read can go on
    while a commit waits for the disk. Postgres: calls wait on the network, so several run at once."""
    return 8 if settings.shared_database else 2


def store_runner(loop: asyncio.AbstractEventLoop, threads: ThreadPoolExecutor) -> StoreCall:
    async def store_call(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await loop.run_in_executor(threads, functools.partial(fn, *args, **kwargs))

    return store_call


def _listen_to_other_nodes(
    settings: Settings, executor: LocalExecutor, events: JobEvents, keys: SigningKeys
) -> ClusterListener:
    """Other nodes' changes reach this node's workers, watchers and webhook sender at once."""

    def resync() -> None:
        executor.wake()
        events.notify_all_threadsafe()
        keys.reload()

    handlers = NoticeHandlers(
        queued=executor.wake,
        changed=events.notify_threadsafe,
        moved=events.queue_moved_threadsafe,
        delivery_due=events.delivery_due_threadsafe,
        keys=keys.reload,
        resync=resync,
    )
    listener = ClusterListener(settings.sql_url, settings.node_id or "", handlers)
    listener.start()
    return listener


async def _sweep_forever(sweep: RetentionSweep) -> None:
    while True:
        try:
            await asyncio.to_thread(sweep.run_once)
        except Exception:
            log.exception("retention sweep failed; trying again later")
        await asyncio.sleep(sweep.interval_seconds)
