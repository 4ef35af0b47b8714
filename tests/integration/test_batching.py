"""Dynamic batching on a live server: compatible queued jobs share one pipeline call, and each job
still gets its own seed, result, cancel and webhook."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.harness import ServerProcess, WebhookReceiver, wait_until

FAST = "fal-ai/hidream-i1-fast"


@pytest.fixture(scope="module")
def batching(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[ServerProcess]:
    # A wait window long enough that jobs submitted together always meet in one batch.
    env = {"HIDREAM_BATCH_MAX_SIZE": "4", "HIDREAM_BATCH_WAIT_SECONDS": "1.5", "HIDREAM_LEASE_SECONDS": "6"}
    with ServerProcess(tmp_path_factory.mktemp("batching"), weights=str(tiny_weights), env=env) as running:
        yield running


def submit_together(server: ServerProcess, bodies: list[dict[str, Any]], webhook: str | None = None) -> list[str]:
    params = {"fal_webhook": webhook} if webhook else None

    def submit(body: dict[str, Any]) -> str:
        response = httpx.post(f"{server.url}/{FAST}", json=body, params=params, timeout=30)
        assert response.status_code == 200, response.text
        return str(response.json()["request_id"])

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(submit, bodies))


def finished(server: ServerProcess, request_id: str) -> tuple[dict[str, Any], list[str]]:
    base = f"{server.url}/{FAST}/requests/{request_id}"
    wait_until(lambda: httpx.get(f"{base}/status").status_code == 200, timeout=120)
    logs = [line["message"] for line in httpx.get(f"{base}/status", params={"logs": 1}).json()["logs"]]
    return httpx.get(base).json(), logs


def pixels(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(httpx.get(url).content)).convert("RGB"), dtype=np.float64)


def test_compatible_jobs_share_a_call_and_keep_their_own_results(
    batching: ServerProcess, receiver: WebhookReceiver
) -> None:
    bodies = [
        {"prompt": f"a boat number {index}", "seed": 100 + index, "num_inference_steps": 3, "output_format": "png"}
        for index in range(4)
    ]

    ids = submit_together(batching, bodies, webhook=receiver.url("/batch"))
    outcomes = [finished(batching, request_id) for request_id in ids]

    assert any("batched with 3 other job(s) in one pipeline call" in logs for _, logs in outcomes)
    assert [result["seed"] for result, _ in outcomes] == [100, 101, 102, 103]
    assert len({result["images"][0]["url"] for result, _ in outcomes}) == 4
    hooks = receiver.wait_for("/batch", count=4)
    assert sorted(hook.json()["request_id"] for hook in hooks) == sorted(ids)
    assert all(hook.json()["status"] == "OK" for hook in hooks)

    # The same job alone renders the same image (up to float reduction order across batch sizes).
    (alone_id,) = submit_together(batching, [bodies[2]])
    alone, alone_logs = finished(batching, alone_id)
    assert not any("batched with" in line for line in alone_logs)
    difference = np.abs(pixels(alone["images"][0]["url"]) - pixels(outcomes[2][0]["images"][0]["url"]))
    assert difference.mean() < 1.0, difference.mean()


def test_incompatible_jobs_do_not_share_a_call(batching: ServerProcess) -> None:
    bodies = [
        {"prompt": "x", "seed": 1, "num_inference_steps": 2},
        {"prompt": "x", "seed": 1, "num_inference_steps": 3},  # other steps
        {"prompt": "x", "seed": 1, "num_inference_steps": 2, "image_size": "landscape_16_9"},  # other size
    ]

    ids = submit_together(batching, bodies)

    for request_id in ids:
        _, logs = finished(batching, request_id)
        assert not any("batched with" in line for line in logs)


def test_a_cancel_inside_a_batch_ends_only_that_job(batching: ServerProcess) -> None:
    bodies = [{"prompt": f"p{index}", "seed": index, "num_inference_steps": 40} for index in range(3)]
    ids = submit_together(batching, bodies)
    victim = f"{batching.url}/{FAST}/requests/{ids[1]}"
    wait_until(lambda: httpx.get(f"{victim}/status").json()["status"] == "IN_PROGRESS", timeout=60)

    httpx.put(f"{victim}/cancel")

    results = {request_id: finished(batching, request_id)[0] for request_id in ids}
    assert httpx.get(f"{victim}/status").json()["status"] == "COMPLETED"
    assert httpx.get(victim).status_code == 400  # a cancelled job has no result
    assert all(len(results[request_id]["images"]) == 1 for request_id in (ids[0], ids[2]))
