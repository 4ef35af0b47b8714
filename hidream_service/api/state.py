"""What the request handlers share, built once by create_app()."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from hidream_service.api.auth import ApiKeys
from hidream_service.api.events import JobEvents
from hidream_service.api.image_fetch import ImageInputs
from hidream_service.config import Settings
from hidream_service.jobs.service import JobService
from hidream_service.models.registry import Endpoint
from hidream_service.signing_keys import SigningKeys
from hidream_service.storage import LocalOutputStorage
from webhooks.delivery import Deliverer
from webhooks.outbox import SqliteOutbox

if TYPE_CHECKING:
    from hidream_service.jobs.pool import WorkerPool


@dataclass
class AppState:
    settings: Settings
    service: JobService
    endpoints: dict[str, Endpoint]
    api_keys: ApiKeys
    storage: LocalOutputStorage
    events: JobEvents
    pool: WorkerPool | None
    keys: SigningKeys
    outbox: SqliteOutbox
    deliverer: Deliverer
    image_inputs: ImageInputs
    pending_uploads: dict[str, float] = field(default_factory=dict)  # upload id -> expiry, from initiate


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.hidream
    return state
