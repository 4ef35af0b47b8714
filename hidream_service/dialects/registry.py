"""The dialects this service speaks, and what the job core and the deliverer ask of them as a whole.

To add a dialect, write its module (see docs/architecture.md, "Add a dialect") and put its object in
DIALECTS below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hidream_service.dialects.base import Dialect
from hidream_service.dialects.fal import FAL
from hidream_service.dialects.openai import OPENAI
from hidream_service.dialects.replicate import REPLICATE
from hidream_service.dialects.wavespeed import WAVESPEED
from hidream_service.jobs.model import Job
from hidream_service.models.registry import Registry
from hidream_service.signing_keys import SigningKeys
from webhooks.outbox import Delivery, OutboxMessage

if TYPE_CHECKING:
    from webhooks.delivery import Signer  # the deliverer (and httpx) stay out of worker processes

#: Every dialect the service speaks. (fal's routes are matched last: `routes_last`.)
DIALECTS: tuple[Dialect, ...] = (FAL, REPLICATE, WAVESPEED, OPENAI)
BY_ID = {dialect.id: dialect for dialect in DIALECTS}


class DialectEndings:
    """The job core's JobEndings: each job's webhooks as its own dialect renders them. Picklable, so
    that the server hands it to its worker processes."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def ending(self, job: Job) -> OutboxMessage | None:
        return dialect_of(job).ending(job, self.registry.endpoints.get(job.endpoint))

    def progress(self, job: Job, event: str, sequence: int) -> OutboxMessage | None:
        return dialect_of(job).progress(job, self.registry.endpoints.get(job.endpoint), event, sequence)

    def carries_logs(self, job: Job) -> bool:
        return dialect_of(job).carries_logs


def dialect_of(job: Job) -> Dialect:
    """The job's dialect; a job stored by a dialect this server no longer speaks ends as fal's would,
    as every job that was not Replicate's or WaveSpeed's always did."""
    return BY_ID.get(job.dialect, FAL)


def webhook_signers(keys: SigningKeys) -> Mapping[str, Signer]:
    """Signers by the name a delivery row gives; each signs one attempt with the keys of that moment,
    so a rotation applies to retries of older events too."""

    def signer_of(dialect: Dialect) -> Signer:
        def sign(delivery: Delivery, timestamp: int) -> Mapping[str, str]:
            return dialect.sign(keys, delivery, timestamp)

        return sign

    return {dialect.signer: signer_of(dialect) for dialect in DIALECTS if dialect.signer is not None}
