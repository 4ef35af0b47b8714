"""Liveness, readiness and structured logs, on a live server.

Readiness turns on what the machine does to the server: a database with no room left (the same
test-only hook as test_faults.py), worker processes that die as they start (dead_workers/), each
undone while the server runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import ServerProcess, wait_until
from tests.integration.test_faults import FillableDatabase

DEAD_WORKERS_HOOK = Path(__file__).parent / "dead_workers"


def ready(server: ServerProcess) -> httpx.Response:
    return httpx.get(f"{server.url}/health/ready", timeout=10)


def health(server: ServerProcess) -> httpx.Response:
    return httpx.get(f"{server.url}/health", timeout=10)


def failing_with(server: ServerProcess, check: str) -> dict[str, Any] | None:
    answer = ready(server)
    body: dict[str, Any] = answer.json()
    return body if answer.status_code == 503 and check in body["failing"] else None


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Any:
    """A server of every model (tiny weights served as a real weights directory), logging JSON."""
    data_dir = tmp_path_factory.mktemp("json-logs")
    with ServerProcess(data_dir, weights=str(tiny_weights), env={"HIDREAM_LOG_FORMAT": "json"}) as server:
        yield server


def test_a_healthy_server_is_live_and_ready_with_every_check_passing(json_server: ServerProcess) -> None:
    live = httpx.get(f"{json_server.url}/health/live", timeout=10)
    answer = ready(json_server)

    assert live.status_code == 200 and live.json() == {"status": "live"}
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "status": "ready",
        "checks": {"workers": "ok", "store": "ok", "outputs": "ok", "models": "ok"},
        "failing": [],
    }
    assert health(json_server).json()["status"] == "ok"
    # The outputs probe leaves no file behind.
    assert not list((json_server.data_dir / "outputs").glob(".health-*"))


def test_json_logs_of_a_job_carry_its_request_id_endpoint_and_dialect_in_the_api_and_the_worker(
    json_server: ServerProcess,
) -> None:
    fal = httpx.post(f"{json_server.url}/hidream/noop", json={"prompt": "a fox"}, timeout=10).json()["request_id"]
    replicate = httpx.post(
        f"{json_server.url}/v1/models/hidream/noop/predictions", json={"input": {"prompt": "a fox"}}, timeout=10
    ).json()["id"]
    for request_id in (fal, replicate):
        wait_until(
            lambda request_id=request_id: (
                httpx.get(f"{json_server.url}/v1/requests/{request_id}").json()["status"] == "COMPLETED"
            )
        )

    def lines_of(request_id: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in json_server.log().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("request_id") == request_id]

    for request_id, dialect in ((fal, "fal"), (replicate, "replicate")):
        # The worker's line is written as the job ends; it may reach the log just after.
        lines = wait_until(lambda r=request_id: (found := lines_of(r)) and any("worker" in x for x in found) and found)
        assert {(line["endpoint"], line["dialect"]) for line in lines} == {("hidream/noop", dialect)}
        api = [line for line in lines if "worker" not in line]
        worker = [line for line in lines if "worker" in line]
        assert {line["logger"] for line in api} >= {"hidream_service.api.submission", "uvicorn.access"}
        assert any("completed" in line["message"] for line in worker), worker
        for line in lines:
            assert {"time", "level", "logger", "message"} <= set(line)
    # Every line of the server and its workers is JSON, those about no job included.
    assert all(json.loads(line) for line in json_server.log().splitlines())


def test_a_full_database_makes_the_server_not_ready_naming_the_store_until_it_has_room(tmp_path: Path) -> None:
    disk = FillableDatabase(tmp_path / "data")
    with ServerProcess(tmp_path / "data", env=disk.env()) as server:
        assert ready(server).status_code == 200
        disk.fill()

        full = wait_until(lambda: failing_with(server, "store"))
        assert full["failing"] == ["store"]
        assert full["checks"]["store"].startswith("the job store cannot be written (database or disk is full")
        degraded = health(server)
        assert degraded.status_code == 503 and degraded.json()["status"] == "degraded"
        assert "store: the job store cannot be written" in degraded.json()["reason"]

        disk.free()
        wait_until(lambda: ready(server).status_code == 200)
        assert health(server).json()["status"] == "ok"


def test_a_pool_whose_workers_cannot_run_makes_the_server_not_ready_until_they_run_again(tmp_path: Path) -> None:
    control = tmp_path / "workers-die"
    python_path = os.pathsep.join(filter(None, [str(DEAD_WORKERS_HOOK), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": python_path, "DEAD_WORKERS_CONTROL": str(control)}
    with ServerProcess(tmp_path / "data", env=env) as server:
        assert ready(server).status_code == 200
        control.touch()
        for pid in server.worker_pids():
            os.kill(pid, 9)

        dead = wait_until(lambda: failing_with(server, "workers"))
        assert dead["checks"]["workers"].startswith("no worker can run")
        assert health(server).status_code == 503

        control.unlink()
        wait_until(lambda: ready(server).status_code == 200, timeout=30)
        job = httpx.post(f"{server.url}/hidream/noop", json={}, timeout=10).json()["request_id"]
        wait_until(lambda: httpx.get(f"{server.url}/v1/requests/{job}").json()["status"] == "COMPLETED")


def test_weights_that_go_missing_make_the_server_not_ready_naming_the_models(
    tmp_path: Path, tiny_weights: Path
) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    fast = weights / "HiDream-I1-Fast"
    with ServerProcess(tmp_path / "data", weights=str(weights), env={"HIDREAM_MODELS": "fast"}) as server:
        assert ready(server).status_code == 200
        fast.rename(weights / "moved-away")

        missing = wait_until(lambda: failing_with(server, "models"))
        assert missing["failing"] == ["models"] and "HiDream-I1-Fast" in missing["checks"]["models"]
        assert health(server).status_code == 503

        (weights / "moved-away").rename(fast)
        wait_until(lambda: ready(server).status_code == 200)
