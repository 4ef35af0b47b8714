"""create_app(): the whole server (API, worker pool, webhook delivery) from one Settings object.

Where jobs are stored and run is the runtime's business: `embedded_runtime` (SQLite, worker
processes, a delivery task) for `hidream serve`, or the Modal one (modal_backend.runtime).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import httpx
from fastapi import FastAPI, Request

from hidream_service.api import catalogue, fal, fal_storage, files, openai, playground, replicate, wavespeed
from hidream_service.api import requests as request_routes
from hidream_service.api import webhooks as webhook_routes
from hidream_service.api.auth import ApiKeys
from hidream_service.api.errors import install_error_handlers
from hidream_service.api.events import JobEvents
from hidream_service.api.image_fetch import ImageInputs
from hidream_service.api.state import AppState, Runtime, app_state
from hidream_service.config import Settings
from hidream_service.inference.weights import resolve_weights
from hidream_service.jobs.pool import LocalExecutor, WorkerPool
from hidream_service.jobs.service import build_service
from hidream_service.jobs.store import SqliteJobStore
from hidream_service.models.registry import served_endpoints
from hidream_service.signing_keys import SigningKeys
from hidream_service.storage import LocalOutputStorage
from hidream_service.webhook_payloads import FAL_SIGNER, STANDARD_SIGNER, WAVESPEED_SIGNER
from webhooks.delivery import Deliverer, RetrySchedule, Signer
from webhooks.outbox import Delivery, Outbox, SqliteOutbox
from webhooks.signing import fal_sign_headers, sign_headers, wavespeed_sign_headers
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


def webhook_signers(keys: SigningKeys) -> Mapping[str, Signer]:
    """Signers by the name an outbox row gives; each signs one attempt with the keys of that moment."""

    def standard(delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        return sign_headers(keys.signing_secrets(), delivery.id, timestamp, delivery.body)

    def fal(delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        context = json.loads(delivery.context)
        fal_headers = fal_sign_headers(
            keys.fal_key, context["request_id"], context["user_id"], timestamp, delivery.body
        )
        return {**standard(delivery, timestamp), **fal_headers}

    def wavespeed(delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        return wavespeed_sign_headers(keys.current_secret, delivery.id, timestamp, delivery.body)

    return {STANDARD_SIGNER: standard, FAL_SIGNER: fal, WAVESPEED_SIGNER: wavespeed}


@contextlib.asynccontextmanager
async def embedded_runtime(settings: Settings, *, start_workers: bool = True) -> AsyncIterator[Runtime]:
    """One machine: SQLite in the data dir, worker processes, and the webhook deliverer as a task here."""
    with data_dir_lock(settings):
        keys = SigningKeys.for_settings(settings)
        store = SqliteJobStore(settings.database_path, synchronous=settings.sqlite_synchronous)
        outbox = SqliteOutbox(settings.database_path)
        client = webhook_client(settings)
        deliverer = build_deliverer(settings, outbox, keys, client)
        events = JobEvents(asyncio.get_running_loop(), on_change=deliverer.wake)
        executor = LocalExecutor()
        service = build_service(settings, store, on_submitted=executor.submitted, on_changed=events.notify_threadsafe)
        released = outbox.release_claims(time.time())
        if released:
            log.warning("%d webhook attempt(s) were in flight when the last server stopped; resending", released)
        recovered = service.recover_all_in_progress()
        if recovered:
            log.warning("recovered %d job(s) left running by a previous server", recovered)
        if start_workers:
            executor.pool = WorkerPool(settings, service, on_job_changed=events.notify_threadsafe)
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


def create_app(
    settings: Settings,
    *,
    start_workers: bool = True,
    runtime: Callable[[], contextlib.AbstractAsyncContextManager[Runtime]] | None = None,
) -> FastAPI:
    """Build the app. Its lifespan opens the runtime: by default the embedded one (worker pool and
    webhook delivery loop here); `modal_app.py` passes the Modal one. The routes are the same."""
    layout = resolve_weights(settings.weights, settings.data_dir)
    endpoints = served_endpoints(layout.available_variants() if layout else set())
    open_runtime = runtime or (lambda: embedded_runtime(settings, start_workers=start_workers))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime() as opened, webhook_client(settings) as image_client:
            app.state.hidream = AppState(
                settings=settings,
                service=opened.service,
                endpoints=endpoints,
                api_keys=ApiKeys(settings.api_keys),
                storage=opened.storage,
                events=opened.events,
                executor=opened.executor,
                keys=opened.keys,
                outbox=opened.outbox,
                deliverer=opened.deliverer,
                image_inputs=ImageInputs(
                    image_client,  # image URLs go through the same address guard as webhooks
                    opened.storage,
                    max_bytes=settings.max_image_bytes,
                    max_pixels=settings.max_image_pixels,
                    timeout=settings.image_fetch_timeout_seconds,
                ),
            )
            _log_start(settings, endpoints)
            yield

    app = FastAPI(title="HiDream service", version="0.1.0", lifespan=lifespan)

    install_error_handlers(app)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        state = app_state(request)
        return {"status": "ok", **state.executor.health(), "endpoints": sorted(state.endpoints)}

    for module in (
        playground,
        files,
        webhook_routes,
        request_routes,
        catalogue,
        fal_storage,
        replicate,
        wavespeed,
        openai,
    ):
        app.include_router(module.router)
    for endpoint in endpoints.values():
        fal.add_endpoint_routes(app, endpoint)
    app.include_router(fal.router)  # last: its submit route takes any POST path
    return app


def _log_start(settings: Settings, endpoints: Mapping[str, Any]) -> None:
    if settings.api_keys:
        log.info("API keys required (%d configured)", len(settings.api_keys))
    else:
        log.warning("no API keys set (HIDREAM_API_KEYS): the API is open to anyone who can reach %s", settings.host)
    log.info("data dir %s; serving %s", settings.data_dir, ", ".join(sorted(endpoints)))
    if settings.private_urls_allowed:
        log.info("webhook URLs may point at loopback and private addresses (HIDREAM_ALLOW_PRIVATE_URLS)")
