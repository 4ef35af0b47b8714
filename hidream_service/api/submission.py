"""What every dialect does to start a job: validate the canonical input, check the webhook URL,
honour Idempotency-Key, persist (within the key's queue limit); and, for synchronous dialects, wait
for the job to end, cancelling it if the caller hangs up first."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import urllib.parse
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError

from hidream_service.api import json_body
from hidream_service.api.lora_inputs import LoraInputError, LoraInputs
from hidream_service.api.state import AppState, app_state
from hidream_service.api.webhooks import callback_url_problem
from hidream_service.image_inputs import ImageInputError
from hidream_service.jobs.model import Job, JobRequest, JobStatus
from hidream_service.jobs.service import IdempotencyKeyReused
from hidream_service.jobs.store import QueueFull
from hidream_service.logs import bind_job
from hidream_service.models.family import Endpoint
from hidream_service.models.loras import TakesLoras

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # JSON inputs, besides image inputs sent inline as data URIs
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: What a 429 for a full queue asks the client to wait: about one short job's time.
QUEUE_FULL_RETRY_AFTER_SECONDS = 10


def field_errors(exc: ValidationError, prefix: Sequence[str] = ("body",)) -> list[dict[str, Any]]:
    """pydantic errors as fal's `detail` list, JSON-safe."""
    detail = [{**error, "loc": [*prefix, *error["loc"]]} for error in exc.errors(include_url=False)]
    loaded: list[dict[str, Any]] = json.loads(json.dumps(detail, default=str))
    return loaded


def one_error(loc: Sequence[str | int], msg: str, type_: str) -> list[dict[str, Any]]:
    return [{"loc": list(loc), "msg": msg, "type": type_}]


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object: 415 unless sent as JSON, 413 past the size cap, 422 for anything
    that is not an object (json_body says what else is refused)."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not json_body.is_json(content_type):
        raise HTTPException(415, "send the body as JSON, with Content-Type: application/json")
    # Room for one image input as a base64 data URI; the image's own limit is checked when it is decoded.
    limit = MAX_BODY_BYTES + app_state(request).settings.max_image_bytes * 4 // 3
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    if content_type is None:
        raise HTTPException(415, "send the body as JSON, with Content-Type: application/json")
    try:
        payload = json_body.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise HTTPException(422, one_error(["body"], f"body is not valid JSON: {exc}", "json_invalid")) from None
    if not isinstance(payload, dict):
        raise HTTPException(422, one_error(["body"], "body must be a JSON object", "model_attributes_type"))
    return payload


def parse(model: type[BaseModel], payload: dict[str, Any]) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise HTTPException(422, field_errors(exc)) from None


def base_url(state: AppState, request: Request) -> str:
    return (state.settings.public_url or str(request.base_url)).rstrip("/")


async def submit(
    state: AppState,
    request: Request,
    *,
    endpoint_id: str,
    fal_input: dict[str, Any],
    dialect: str,
    webhook_url: str | None = None,
    webhook_field: Sequence[str] = ("body", "webhook"),
    client_input: dict[str, Any] | None = None,
    webhook_events: Sequence[str] = (),
) -> Job:
    owner = state.api_keys.owner(request)
    endpoint = state.endpoints.get(endpoint_id)
    if endpoint is None:
        served = ", ".join(sorted(state.endpoints))
        raise HTTPException(404, f"model '{endpoint_id}' is not served here; this server serves: {served}")
    validated = parse(endpoint.input_model, fal_input)
    if webhook_url is not None:
        problem = await callback_url_problem(state, webhook_url)
        if problem is not None:
            raise HTTPException(422, one_error(webhook_field, f"webhook URL not allowed: {problem}", "url"))
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise HTTPException(
            422, one_error(["header", "Idempotency-Key"], "must be 1 to 255 characters", "string_too_long")
        )
    as_submitted = validated.model_dump(mode="json")
    job_request = JobRequest(
        endpoint=endpoint.id,
        input=as_submitted,
        owner=owner,
        dialect=dialect,
        webhook_url=webhook_url,
        base_url=base_url(state, request),
        idempotency_key=key,
        client_input=client_input,
        webhook_events=tuple(webhook_events),
        as_submitted=as_submitted,
    )
    try:
        # A repeat is answered before its images are fetched again (their URLs may have expired).
        repeat = await state.store_call(state.service.repeat_of, job_request)
        if repeat is not None:
            return repeat
        job_input = await prepare_images(state, request, endpoint, dict(as_submitted))
        job_input = await prepare_loras(state, request, endpoint, job_input)
        echoed = (
            None if client_input is None else _inline_images_replaced(client_input, endpoint, as_submitted, job_input)
        )
        job, created = await state.store_call(
            state.service.submit, dataclasses.replace(job_request, input=job_input, client_input=echoed)
        )
    except QueueFull as exc:
        raise HTTPException(
            429,
            f"{exc}: wait for some to start, or cancel some",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_SECONDS)},
        ) from None
    except IdempotencyKeyReused:
        raise HTTPException(
            422,
            one_error(
                ["header", "Idempotency-Key"],
                "this Idempotency-Key was already used with a different request",
                "idempotency_key_reused",
            ),
        ) from None
    # The rest of this request's lines (uvicorn's access line too) concern this job.
    bind_job(job.id, job.endpoint, job.dialect)
    log.info("job %s %s", job.id, "queued" if created else "already submitted with this Idempotency-Key")
    return job


def _inline_images_replaced(
    client_input: dict[str, Any], endpoint: Endpoint, submitted: dict[str, Any], prepared: dict[str, Any]
) -> dict[str, Any]:
    """The dialect's own input, kept to be echoed back, with each image sent inline as a data URI
    replaced by the URL of its stored copy: the job row, every status answer and every webhook would
    otherwise carry the whole image again."""

    def urls(value: Any) -> list[Any]:
        return value if isinstance(value, list) else [value]

    stored = {
        before: after
        for field in endpoint.image_fields
        for before, after in zip(urls(submitted.get(field)), urls(prepared.get(field)), strict=True)
        if isinstance(before, str) and before.startswith("data:")
    }
    if not stored:
        return client_input

    def swap(value: Any) -> Any:
        if isinstance(value, list):
            return [swap(item) for item in value]
        return stored.get(value, value) if isinstance(value, str) else value

    return {name: swap(value) for name, value in client_input.items()}


async def prepare_images(
    state: AppState, request: Request, endpoint: Endpoint, job_input: dict[str, Any]
) -> dict[str, Any]:
    """Fetch and check every image input now; the job gets URLs of the clean copies stored here."""
    base = base_url(state, request)
    own_hosts = {request.url.netloc, urllib.parse.urlsplit(base).netloc}
    for field in endpoint.image_fields:
        value = job_input.get(field)
        urls = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        prepared = []
        for index, url in enumerate(urls):
            loc: list[str | int] = ["body", field, index] if isinstance(value, list) else ["body", field]
            try:
                image = await state.image_inputs.prepare(url, own_hosts=own_hosts)
            except ImageInputError as exc:
                detail: Any = exc.message if exc.status == 413 else one_error(loc, exc.message, "image_input")
                raise HTTPException(exc.status, detail) from None
            problem = endpoint.image_shape_problem(image.width, image.height, job_input)
            if problem is not None:
                raise HTTPException(422, one_error(loc, problem, "image_input"))
            prepared.append(f"{base}/files/{image.key}")
        if urls:
            job_input[field] = prepared if isinstance(value, list) else prepared[0]
    return job_input


async def prepare_loras(
    state: AppState, request: Request, endpoint: Endpoint, job_input: dict[str, Any]
) -> dict[str, Any]:
    """Fetch and check every LoRA now (api/lora_inputs.py); the job gets each file's digest."""
    model = endpoint.input_model
    if not issubclass(model, TakesLoras) or not job_input.get("loras"):
        return job_input
    inputs = LoraInputs.for_settings(state.settings, state.image_inputs, state.storage, cache=state.lora_cache)
    own_hosts = {request.url.netloc, urllib.parse.urlsplit(base_url(state, request)).netloc}
    prepared = []
    for index, lora in enumerate(job_input["loras"]):
        try:
            digest = await inputs.prepare(
                lora["path"], own_hosts=own_hosts, target=model.lora_target, pinned=lora.get("sha256")
            )
        except LoraInputError as exc:
            loc: list[str | int] = ["body", "loras", index, "path"]
            detail = exc.message if exc.status == 413 else one_error(loc, exc.message, "lora_input")
            raise HTTPException(exc.status, detail) from None
        prepared.append({**lora, "sha256": digest})
    return {**job_input, "loras": prepared}


async def until_terminal(
    state: AppState, job_id: str, owner: str, timeout: float, *, with_logs: bool = False, request: Request | None = None
) -> Job:
    """The job once it has ended, or as it stands when `timeout` runs out. Wakes when this job
    changes (and once a second, should a wake-up ever be missed).

    With `request`, the synchronous request waiting for it (looked at on each wake-up): if its caller
    hangs up first, the job is cancelled, unless it has a webhook (someone else still hears how it
    ends), and returned as it stands. Nobody else knows the id of a synchronous call's job, so it
    would run for no one.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with state.events.watching(job_id) as watch:
        while True:
            version = watch.version
            job = await state.store_call(state.service.get, job_id, owner, with_logs=with_logs)
            assert job is not None
            watch.read(queued=job.status is JobStatus.IN_QUEUE)
            remaining = deadline - loop.time()
            if job.status.is_terminal() or remaining <= 0:
                return job
            await watch.changed_since(version, min(remaining, 1.0))
            if request is not None and await request.is_disconnected():
                await cancel_unheard(state, job, "synchronous")
                return job


async def cancel_unheard(state: AppState, job: Job, caller: str) -> None:
    """Cancel a job whose only caller (a synchronous or a streamed run) hung up before it ended,
    unless it has a webhook: then someone still hears how it ends."""
    if job.webhook_url is not None:
        return
    await state.store_call(state.service.cancel, job.id, job.owner)
    bind_job(job.id, job.endpoint, job.dialect)
    log.info("cancelled %s: its %s caller disconnected", job.id, caller)


async def watched_job(
    state: AppState, job_id: str, owner: str, *, with_logs: bool, keepalive: float, with_preview: bool = False
) -> AsyncGenerator[Job | None, None]:
    """The job now, then each time it changes, until it has ended (or is gone); None when nothing
    changed for `keepalive` seconds (a stream's cue for a keep-alive). What a status stream reads.

    With logs, each job carries only the lines new since the one before: a read fetches those alone,
    however long the log has grown."""
    logs_read = 0
    with state.events.watching(job_id) as watch:
        while True:
            version = watch.version
            job = await state.store_call(
                state.service.get, job_id, owner, with_logs=with_logs, with_preview=with_preview, logs_after=logs_read
            )
            if job is None:
                return
            logs_read += len(job.logs or ())
            watch.read(queued=job.status is JobStatus.IN_QUEUE)
            yield job
            if job.status.is_terminal():
                return
            if not await watch.changed_since(version, keepalive):
                yield None
