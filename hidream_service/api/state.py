"""What the request handlers share, built once by create_app()."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ParamSpec, Protocol, TypeVar

from fastapi import Request

from hidream_service.api.auth import ApiKeys
from hidream_service.api.image_fetch import ImageInputs
from hidream_service.config import Settings
from hidream_service.inference.lora_cache import LoraCache
from hidream_service.jobs.events import JobEvents
from hidream_service.jobs.protocols import Executor
from hidream_service.jobs.service import JobService
from hidream_service.metrics import Metrics
from hidream_service.models.family import Endpoint
from hidream_service.models.registry import Registry
from hidream_service.signing_keys import SigningKeys
from hidream_service.storage import OutputStorage
from webhooks.delivery import Deliverer
from webhooks.outbox import Outbox


class NamingDialect(Protocol):
    """What the service's own routes ask of a dialect: its id and its name for an endpoint."""

    id: str

    def name_of(self, endpoint: Endpoint) -> str | None: ...


P = ParamSpec("P")
T = TypeVar("T")


class StoreCall(Protocol):
    """Runs a blocking store call (the job store, the outbox, the signing keys' state) off the event
    loop: `await store_call(fn, *args, **kwargs)`."""

    def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]: ...


@dataclass(frozen=True)
class Runtime:
    """What a runtime opens for the app: the same pieces, backed locally or by Modal."""

    service: JobService
    storage: OutputStorage
    events: JobEvents
    executor: Executor
    keys: SigningKeys
    outbox: Outbox
    deliverer: Deliverer  # replays by hand; the embedded runtime also runs its delivery loop
    store_call: StoreCall = field(default=asyncio.to_thread)
    metrics: Metrics | None = None  # None where this runtime collects none (GET /metrics is then a 404)
    lora_cache: LoraCache | None = None  # None: a LoraCache on HIDREAM_LORA_CACHE_DIR, shared as a directory


@dataclass
class AppState:
    settings: Settings
    service: JobService
    registry: Registry
    endpoints: dict[str, Endpoint]  # those served: the registry's, less those without weights here
    dialects: tuple[NamingDialect, ...]
    api_keys: ApiKeys
    storage: OutputStorage
    events: JobEvents
    executor: Executor
    keys: SigningKeys
    outbox: Outbox
    deliverer: Deliverer
    image_inputs: ImageInputs
    store_call: StoreCall = field(default=asyncio.to_thread)
    metrics: Metrics | None = None
    lora_cache: LoraCache | None = None


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.hidream
    return state
