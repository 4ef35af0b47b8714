"""What the request handlers share, built once by create_app()."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastapi import Request

from hidream_service.api.auth import ApiKeys
from hidream_service.api.image_fetch import ImageInputs
from hidream_service.config import Settings
from hidream_service.jobs.events import JobEvents
from hidream_service.jobs.protocols import Executor
from hidream_service.jobs.service import JobService
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


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.hidream
    return state
