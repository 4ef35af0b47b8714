"""create_app(): the whole server (API, worker pool, webhook delivery) from one Settings object.

The composition root: the service's own routes (api/), one router per dialect (dialects/), over a
runtime that says where jobs are stored and run: `embedded_runtime` (SQLite, worker processes, a
delivery task) for `hidream serve`, or the Modal one (modal_backend/).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

from fastapi import Depends, FastAPI

from hidream_service.api import catalogue, fal_proxy, fal_storage, files, health, playground, prometheus
from hidream_service.api import requests as request_routes
from hidream_service.api import webhooks as webhook_routes
from hidream_service.api.auth import ApiKeys
from hidream_service.api.errors import install_error_handlers
from hidream_service.api.guard import RequestChecks, RequestGuard
from hidream_service.api.image_fetch import ImageInputs
from hidream_service.api.state import AppState, Runtime
from hidream_service.config import Settings, SettingsError
from hidream_service.dialects.registry import DIALECTS
from hidream_service.image_inputs import ImageDecoder
from hidream_service.inference.weights import resolve_weights
from hidream_service.models.family import Endpoint
from hidream_service.models.registry import DEFAULT_REGISTRY, Registry
from hidream_service.runtime import embedded_runtime, webhook_client

log = logging.getLogger("hidream_service")


def served_endpoints(settings: Settings, registry: Registry) -> dict[str, Endpoint]:
    """The endpoints this server answers: those of the models named in settings.models, or else of
    the models its weights directory holds."""
    if settings.models is None:
        return registry.served(resolve_weights(settings.weights, settings.data_dir))
    unknown = [model for model in settings.models if model not in registry.models]
    if unknown:
        raise SettingsError(f"unknown model(s) to serve: {', '.join(unknown)}; known: {', '.join(registry.models)}")
    return registry.served_models(set(settings.models))


def create_app(
    settings: Settings,
    *,
    registry: Registry = DEFAULT_REGISTRY,
    start_workers: bool = True,
    runtime: Callable[[], contextlib.AbstractAsyncContextManager[Runtime]] | None = None,
) -> FastAPI:
    """Build the app for the families of `registry`. Its lifespan opens the runtime: by default the
    embedded one (worker pool and webhook delivery loop here); `modal_app.py` passes the Modal one.
    The routes are the same."""
    unknown = [endpoint for endpoint in settings.preload if endpoint not in registry.endpoints]
    if unknown:
        known = ", ".join(registry.endpoints)
        raise SettingsError(f"unknown endpoint(s) to preload: {', '.join(unknown)}; known: {known}")
    endpoints = served_endpoints(settings, registry)
    open_runtime = runtime or (lambda: embedded_runtime(settings, registry, start_workers=start_workers))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime() as opened, webhook_client(settings) as image_client:
            app.state.hidream = AppState(
                settings=settings,
                service=opened.service,
                registry=registry,
                endpoints=endpoints,
                dialects=DIALECTS,
                api_keys=ApiKeys(settings.api_keys, settings.admin_keys),
                storage=opened.storage,
                events=opened.events,
                executor=opened.executor,
                keys=opened.keys,
                outbox=opened.outbox,
                deliverer=opened.deliverer,
                store_call=opened.store_call,
                metrics=opened.metrics,
                lora_cache=opened.lora_cache,
                image_inputs=ImageInputs(
                    image_client,  # image URLs go through the same address guard as webhooks
                    opened.storage,
                    max_bytes=settings.max_image_bytes,
                    decoder=ImageDecoder(
                        max_pixels=settings.max_image_pixels,
                        max_decoded_bytes=settings.max_image_decoded_bytes,
                        max_concurrent=settings.max_concurrent_decodes,
                    ),
                    timeout=settings.image_fetch_timeout_seconds,
                ),
            )
            _log_start(settings, endpoints)
            yield

    # Every route checks the Host and refuses other sites' pages, each refusal in its dialect's shape.
    checks = [Depends(RequestChecks(settings))]
    app = FastAPI(title="HiDream service", version="0.1.0", lifespan=lifespan, dependencies=checks)

    install_error_handlers(app)
    app.add_middleware(RequestGuard, body_timeout=settings.request_body_timeout_seconds)
    app.add_middleware(fal_proxy.FalProxy, public_url=settings.public_url)  # fal.config({proxyUrl}) lands here

    # Jobs run here unless a runtime is given (Modal's web containers hold no weights, start no workers).
    app.include_router(health.router(health.Readiness(local=runtime is None)))
    for module in (playground, files, webhook_routes, request_routes, catalogue, fal_storage, prometheus):
        app.include_router(module.router)
    for dialect in sorted(DIALECTS, key=lambda dialect: dialect.routes_last):
        app.include_router(dialect.router(endpoints))
    return app


def _log_start(settings: Settings, endpoints: Mapping[str, Endpoint]) -> None:
    if settings.api_keys:
        log.info("API keys required (%d configured)", len(settings.api_keys))
    else:
        log.warning("no API keys set (HIDREAM_API_KEYS): the API is open to anyone who can reach %s", settings.host)
    log.info("data dir %s; serving %s", settings.data_dir, ", ".join(sorted(endpoints)))
    if settings.private_urls_allowed:
        log.info("webhook URLs may point at loopback and private addresses (HIDREAM_ALLOW_PRIVATE_URLS)")
