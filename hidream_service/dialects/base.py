"""A dialect: one wire protocol the service speaks, in one object.

    Dialect ── router(endpoints)   its routes, each answering errors in its own shape
       │    ── render_error        that shape: (status, body) for an HTTP status and a detail
       │    ── ending / progress   the webhooks its jobs send (rendered in the transaction that ends them)
       └────── signer / sign       how those webhooks are signed (the outbox row names the signer)

A dialect translates its clients' inputs into the canonical (fal-shaped) input of an endpoint and
renders the canonical job back; it finds endpoints by the names the families give them
(`Endpoint.names[dialect.id]`, through `name_of`) and chooses input shapes by the endpoint's task. The registry
(registry.py) is a list of dialects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hidream_service.jobs.model import Job
from webhooks.outbox import Delivery, OutboxMessage

if TYPE_CHECKING:
    from fastapi import APIRouter

    from hidream_service.models.family import Endpoint
    from hidream_service.signing_keys import SigningKeys


class Dialect:
    """The base every dialect extends; the defaults suit a dialect that sends no webhooks."""

    #: Stored with each job it submits, and the key of its names in `Endpoint.names`.
    id: str
    #: The name its webhook deliveries are signed under (stored with each delivery); None: it sends none.
    signer: str | None = None
    #: Whether its webhooks carry the job's log (the ending must read the log first).
    carries_logs: bool = False
    #: Whether its routes are matched after every other dialect's (a catch-all path of its own).
    routes_last: bool = False

    def name_of(self, endpoint: Endpoint) -> str | None:
        """The endpoint's name in this dialect (what its family calls it there), or None where this
        dialect does not list it."""
        return endpoint.names.get(self.id)

    def models(self, endpoints: Iterable[Endpoint]) -> dict[str, Endpoint]:
        """Its model table: the name of each endpoint it lists -> the endpoint (the first to claim a
        name keeps it)."""
        table: dict[str, Endpoint] = {}
        for endpoint in endpoints:
            name = self.name_of(endpoint)
            if name is not None:
                table.setdefault(name, endpoint)
        return table

    def router(self, endpoints: Mapping[str, Endpoint]) -> APIRouter:
        """Its routes, for the endpoints this server serves."""
        raise NotImplementedError

    def render_error(self, status: int, detail: Any) -> tuple[int, dict[str, Any]]:
        """The status and body of an error in this dialect's shape. `detail` is a message, or a list
        of field errors as pydantic makes them ({"loc", "msg", "type"})."""
        return status, {"detail": detail}

    def ending(self, job: Job, endpoint: Endpoint | None) -> OutboxMessage | None:
        """The webhook of one of its jobs that just ended, or None when nobody asked for one.
        `endpoint` is the job's (None: no longer served), for its name in this dialect."""
        return None

    def progress(self, job: Job, endpoint: Endpoint | None, event: str, sequence: int) -> OutboxMessage | None:
        """A progress event (`start`, `logs`) its caller asked for, or None."""
        return None

    def sign(self, keys: SigningKeys, delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        """The headers that sign one attempt of one of its deliveries, with the keys of that moment."""
        raise NotImplementedError(f"the {self.id} dialect sends no webhooks")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


def field_name(error: Mapping[str, Any]) -> str:
    """A pydantic error's field path, dotted, without its location prefix (body, query, header)."""
    parts = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "header")]
    return ".".join(parts)


def error_message(detail: Any) -> str:
    """A detail as one line of text: field errors joined as `field: message; ...`."""
    if isinstance(detail, list):
        return "; ".join(
            f"{field_name(error)}: {error.get('msg')}" if field_name(error) else str(error.get("msg"))
            for error in detail
        )
    return str(detail)
