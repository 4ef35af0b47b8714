"""Webhook endpoints of our own: public keys, the signing secret, delivery history and replay.

GET  /.well-known/jwks.json                         Ed25519 keys that verify fal-style signatures
POST /v1/admin/fal-key/rotate                       (admin) a new fal key: published now, signing a grace period later
GET  /v1/requests/{request_id}/webhooks             the request's deliveries and every attempt
POST /v1/webhooks/deliveries/{delivery_id}/replay   202 at once, then sent in the background: same
                                                    webhook-id, fresh signature; the attempt shows in the history

Each API key's signing secret is served to that key where each dialect's clients look for it:
Replicate's `/v1/webhooks/default/secret` (dialects/replicate/routes.py) and WaveSpeed's
`/api/v3/webhook/secret`.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from hidream_service.api.rendering import iso_offset
from hidream_service.api.state import AppState, app_state
from webhooks.outbox import AttemptRecord, Delivery
from webhooks.signing import jwks, key_id
from webhooks.ssrf import BlockedURL, checked_addresses

router = APIRouter()

MAX_URL_LENGTH = 2048


async def callback_url_problem(state: AppState, url: str) -> str | None:
    """Why a caller's webhook URL cannot be used (checked at submit), or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if any(ord(char) < 32 or ord(char) == 127 for char in url):
        return "it contains a control character (percent-encode it)"
    try:
        url.encode("utf-8")
        httpx.URL(url)  # what every attempt sends through: a URL it refuses could never be delivered
    except UnicodeError:
        return "it is not valid text (a lone surrogate); percent-encode it"
    except httpx.InvalidURL as exc:
        return f"not a valid URL: {exc}"
    try:
        await checked_addresses(url, allow_private=state.settings.private_urls_allowed)
    except BlockedURL as exc:
        return str(exc)
    return None


def _attempt_json(number: int, attempt: AttemptRecord) -> dict[str, Any]:
    return {
        "attempt": number,
        "at": iso_offset(attempt.started_at),
        "status_code": attempt.status_code,
        "latency_ms": round(attempt.latency_ms, 2),
        "error": attempt.error,
        "response": attempt.response_head,
        "replay": attempt.replay,
    }


def _delivery_json(state: AppState, delivery: Delivery) -> dict[str, Any]:
    """Reads the delivery's attempts: call it off the event loop."""
    return {
        "id": delivery.id,
        "request_id": delivery.subject,
        "url": delivery.url,
        "state": delivery.state.value,
        "attempts": [
            _attempt_json(number, attempt) for number, attempt in enumerate(state.outbox.attempts(delivery.id), start=1)
        ],
        "next_attempt_at": iso_offset(delivery.next_attempt_at),
        "created_at": iso_offset(delivery.created_at),
        "finished_at": iso_offset(delivery.finished_at),
    }


@router.get("/.well-known/jwks.json")
async def jwks_document(request: Request) -> dict[str, Any]:
    return jwks(app_state(request).keys.fal_public_keys())


@router.post("/v1/admin/fal-key/rotate")
async def rotate_fal_key(request: Request) -> dict[str, Any]:
    """A new Ed25519 key for every fal-style signature. It is in the JWKS at once and signs only after
    the rotation grace period, by when receivers' cached JWKS hold it too; server-wide, so admin only."""
    state = app_state(request)
    state.api_keys.admin(request)
    public_key, signs_from = await state.store_call(state.keys.rotate_fal_key)
    return {"kid": key_id(public_key), "signs_from": iso_offset(signs_from)}


@router.get("/v1/requests/{request_id}/webhooks")
async def deliveries_of_request(request: Request, request_id: str) -> dict[str, Any]:
    state = app_state(request)
    if await state.store_call(state.service.get, request_id, state.api_keys.owner(request)) is None:
        raise HTTPException(404, f"request {request_id} not found")
    return {
        "deliveries": await state.store_call(
            lambda: [_delivery_json(state, d) for d in state.outbox.for_subject(request_id)]
        )
    }


@router.post("/v1/webhooks/deliveries/{delivery_id}/replay", status_code=202)
async def replay(request: Request, delivery_id: str) -> JSONResponse:
    """Answered at once: a slow receiver holds no caller. `attempts` is the history so far; the replay's
    own attempt comes after them, marked `"replay": true`. A replay already on its way is not doubled."""
    state = app_state(request)
    owner = state.api_keys.owner(request)
    delivery = await state.store_call(state.outbox.get, delivery_id)
    if delivery is None or await state.store_call(state.service.get, delivery.subject, owner) is None:
        raise HTTPException(404, f"webhook delivery {delivery_id} not found")
    shown = await state.store_call(_delivery_json, state, delivery)  # read before the replay can add to it
    started = state.deliverer.start_replay(delivery)
    return JSONResponse({"id": delivery.id, "already_replaying": not started, "delivery": shown}, status_code=202)
