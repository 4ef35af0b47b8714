"""Wake-ups are per job: with many status streams open, one job's change re-reads that job only; a
queued job's stream still hears the queue move; and a closed stream stops watching."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hidream_service.config import Settings
from hidream_service.dialects.fal import routes as fal_routes
from hidream_service.jobs.model import LogLine, Progress
from hidream_service.server import create_app
from tests.integration.harness import serving, wait_until

STREAMS = 100


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    # No keep-alive re-reads within a test: only wake-ups make a stream read.
    monkeypatch.setattr(fal_routes, "KEEPALIVE_SECONDS", 300.0)
    # No workers: nothing but the test moves the jobs.
    return create_app(Settings(data_dir=tmp_path, sqlite_synchronous="NORMAL"), start_workers=False)


@pytest.fixture
def url(app: FastAPI) -> Iterator[str]:
    with serving(app) as running:
        yield running


def count_reads(app: FastAPI) -> Counter[str]:
    """Store reads of each job from now on."""
    store = app.state.hidream.service.store
    reads: Counter[str] = Counter()
    read = store.get

    def counting(job_id: str, **options: Any) -> Any:
        reads[job_id] += 1
        return read(job_id, **options)

    store.get = counting
    return reads


async def next_event(lines: AsyncIterator[str]) -> dict[str, Any]:
    async for line in lines:
        if line.startswith("data: "):
            body: dict[str, Any] = json.loads(line.removeprefix("data: "))
            return body
    raise AssertionError("the stream ended without another event")


async def open_streams(client: httpx.AsyncClient, job_ids: list[str], query: str) -> list[Any]:
    streams = []
    for job_id in job_ids:
        request = client.build_request("GET", f"/hidream/noop/requests/{job_id}/status/stream{query}")
        response = await client.send(request, stream=True)
        lines = response.aiter_lines()
        await next_event(lines)
        streams.append((response, lines))
    return streams


def submit(url: str, count: int) -> list[str]:
    return [httpx.post(f"{url}/hidream/noop", json={}).json()["request_id"] for _ in range(count)]


def test_one_running_job_s_progress_re_reads_its_own_stream_only(url: str, app: FastAPI) -> None:
    service = app.state.hidream.service
    job_ids = submit(url, STREAMS)
    leases = {lease.job.id: lease for lease in (service.lease_next("test") for _ in job_ids) if lease is not None}
    assert set(leases) == set(job_ids)  # all running now: no queue places to change

    async def watch_then_report_progress() -> tuple[Counter[str], dict[str, Any]]:
        limits = httpx.Limits(max_connections=STREAMS + 10)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            streams = await open_streams(client, job_ids, "?logs=1")
            reads = count_reads(app)
            service.record(leases[job_ids[0]], [LogLine(time.time(), "INFO", "step 1/2")], Progress(1, 2))
            event = await asyncio.wait_for(next_event(streams[0][1]), 10)
            await asyncio.sleep(0.5)  # time for any other stream to (wrongly) wake and read
            for response, _ in streams:
                await response.aclose()
            return reads, event

    reads, event = asyncio.run(watch_then_report_progress())

    assert event["logs"][-1]["message"] == "step 1/2"
    assert reads[job_ids[0]] >= 1
    assert {job_id: reads[job_id] for job_id in job_ids[1:] if reads[job_id]} == {}
    wait_until(lambda: app.state.hidream.events.watched == 0, timeout=10)  # closed streams stop watching


def test_a_queued_job_s_stream_hears_the_queue_move(url: str) -> None:
    ahead, mine = submit(url, 2)

    async def watch_then_cancel_the_one_ahead() -> tuple[dict[str, Any], dict[str, Any], float]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            request = client.build_request("GET", f"/hidream/noop/requests/{mine}/status/stream")
            response = await client.send(request, stream=True)
            lines = response.aiter_lines()
            first = await next_event(lines)
            started = time.monotonic()
            assert (await client.put(f"/hidream/noop/requests/{ahead}/cancel")).status_code == 202
            moved = await asyncio.wait_for(next_event(lines), 10)
            await response.aclose()
            return first, moved, time.monotonic() - started

    first, moved, seconds = asyncio.run(watch_then_cancel_the_one_ahead())

    assert (first["queue_position"], moved["queue_position"]) == (1, 0)
    assert seconds < 5  # the wake-up, not a keep-alive re-read


def test_a_stream_reads_only_the_log_lines_it_has_not_given(url: str, app: FastAPI) -> None:
    service = app.state.hidream.service
    (job_id,) = submit(url, 1)
    lease = service.lease_next("test")
    assert lease is not None and lease.job.id == job_id
    service.record(lease, [LogLine(time.time(), "INFO", f"line {n}") for n in range(3)], None)
    store = service.store
    asked: list[int] = []
    read = store.get

    def recording(job_id: str, **options: Any) -> Any:
        asked.append(options.get("logs_after", 0))
        return read(job_id, **options)

    async def watch_two_events() -> tuple[dict[str, Any], dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            request = client.build_request("GET", f"/hidream/noop/requests/{job_id}/status/stream?logs=1")
            response = await client.send(request, stream=True)
            lines = response.aiter_lines()
            first = await next_event(lines)
            store.get = recording  # from here: the reads that follow a change
            service.record(lease, [LogLine(time.time(), "INFO", "line 3")], None)
            second = await asyncio.wait_for(next_event(lines), 10)
            await response.aclose()
            return first, second

    first, second = asyncio.run(watch_two_events())

    assert [line["message"] for line in first["logs"]] == ["line 0", "line 1", "line 2"]
    assert [line["message"] for line in second["logs"]] == ["line 3"]
    assert asked == [3]  # one read, past the three lines already sent
