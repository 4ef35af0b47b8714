"""Wake-ups are per job: with many status streams open, one job's change re-reads that job only."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hidream_service.config import Settings
from hidream_service.server import create_app
from tests.integration.harness import serving

STREAMS = 100


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    # No workers: the jobs stay queued, and nothing but the test changes them.
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


async def first_event(response: httpx.Response, lines: Any) -> dict[str, Any]:
    async for line in lines:
        if line.startswith("data: "):
            body: dict[str, Any] = json.loads(line.removeprefix("data: "))
            return body
    raise AssertionError(f"stream of {response.url} ended without an event")


async def watch_then_cancel_one(url: str, job_ids: list[str], app: FastAPI) -> tuple[Counter[str], dict[str, Any]]:
    limits = httpx.Limits(max_connections=STREAMS + 10)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client, asyncio.TaskGroup() as group:
        streams = []
        for job_id in job_ids:
            request = client.build_request("GET", f"/hidream/noop/requests/{job_id}/status/stream")
            response = await client.send(request, stream=True)
            lines = response.aiter_lines()
            assert (await first_event(response, lines))["status"] == "IN_QUEUE"
            streams.append((response, lines))
        reads = count_reads(app)
        ending = group.create_task(first_event(*streams[0]))
        cancelled = await client.put(f"/hidream/noop/requests/{job_ids[0]}/cancel")
        assert cancelled.status_code == 202
        last = await asyncio.wait_for(ending, 10)
        await asyncio.sleep(0.5)  # time for any other stream to (wrongly) wake and read
        for response, _ in streams:
            await response.aclose()
        return reads, last


def test_one_job_s_change_re_reads_the_store_for_its_own_stream_only(url: str, app: FastAPI) -> None:
    job_ids = [httpx.post(f"{url}/hidream/noop", json={}).json()["request_id"] for _ in range(STREAMS)]

    reads, last = asyncio.run(watch_then_cancel_one(url, job_ids, app))

    assert last["status"] == "COMPLETED" and last["error_type"] == "request_cancelled"
    assert reads[job_ids[0]] >= 2  # the cancel route, then its stream
    assert {job_id: reads[job_id] for job_id in job_ids[1:] if reads[job_id]} == {}
