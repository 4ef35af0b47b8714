"""What the streaming routes share: a job's changes as updates (only what is new since the last:
log lines, progress, a preview), server-sent events, and a streamed run that a hung-up caller cancels.

Every dialect's stream reads the same updates and renders them its own way (fal's status events,
Replicate's `output`/`logs`/`done`, OpenAI's partial images); the job itself knows nothing of streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse

from hidream_service.api.state import AppState
from hidream_service.api.submission import cancel_unheard, watched_job
from hidream_service.jobs.model import Job, LogLine, Preview

log = logging.getLogger(__name__)

#: A comment line this often keeps idle streams open through proxies, and under fal's JS client's
#: 15 s "no messages" limit.
KEEPALIVE_SECONDS = 10.0
_cancels: set[asyncio.Task[Any]] = set()  # cancels of abandoned runs, until they are written


@dataclass(frozen=True)
class JobUpdate:
    """The job as it stands (its `logs`: only the new lines), and what changed since the previous update."""

    job: Job
    new_logs: list[LogLine]
    preview: Preview | None  # a preview newer than the last one given, if there is one
    progressed: bool  # its progress moved

    @property
    def ended(self) -> bool:
        return self.job.status.is_terminal()


async def job_updates(
    state: AppState, job_id: str, owner: str, *, with_logs: bool, with_previews: bool, keepalive: float
) -> AsyncGenerator[JobUpdate | None, None]:
    """The job now, then one update per change until it has ended; None after `keepalive` seconds
    without one. Each log line and preview is given once."""
    preview_step = 0
    progress = None
    async with contextlib.aclosing(
        watched_job(state, job_id, owner, with_logs=with_logs, with_preview=with_previews, keepalive=keepalive)
    ) as changes:
        async for job in changes:
            if job is None:
                yield None
                continue
            new_logs = list(job.logs or ())  # watched_job reads only the new lines
            preview = job.preview if job.preview is not None and job.preview.step > preview_step else None
            if preview is not None:
                preview_step = preview.step
            progressed, progress = job.progress != progress, job.progress
            yield JobUpdate(job, new_logs, preview, progressed)


async def run_updates(
    state: AppState, job: Job, *, with_logs: bool, with_previews: bool
) -> AsyncGenerator[JobUpdate | None, None]:
    """The updates of a job whose stream is its only caller (a streamed run): if the stream ends
    before the job does, its caller hung up, and the job is cancelled, unless it has a webhook
    (someone else still hears how it ends)."""
    ended = False
    try:
        async with contextlib.aclosing(
            job_updates(
                state, job.id, job.owner, with_logs=with_logs, with_previews=with_previews, keepalive=KEEPALIVE_SECONDS
            )
        ) as updates:
            async for update in updates:
                ended = ended or (update is not None and update.ended)
                yield update
    finally:
        if not ended:
            _cancel_abandoned(state, job)


def _cancel_abandoned(state: AppState, job: Job) -> None:
    """The cancel runs as a task of its own: the stream closing here may be torn down with its request."""

    async def cancel() -> None:
        try:
            await cancel_unheard(state, job, "streaming")
        except Exception:
            log.exception("could not cancel %s after its stream was abandoned", job.id)

    with contextlib.suppress(RuntimeError):  # no running loop: the server is shutting down
        task = asyncio.get_running_loop().create_task(cancel())
        _cancels.add(task)
        task.add_done_callback(_cancels.discard)


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event: `data` as compact JSON (or as is, when a string), named when `event`."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = "".join(f"data: {line}\n" for line in text.split("\n"))
    return f"event: {event}\n{lines}\n" if event else f"{lines}\n"


KEEPALIVE = ": keep-alive\n\n"


def event_stream(events: AsyncIterator[str], headers: Mapping[str, str] | None = None) -> StreamingResponse:
    """A text/event-stream response that no proxy caches or buffers."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
