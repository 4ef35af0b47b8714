"""Two `hidream serve` nodes on one Postgres, each with its own data dir and the same outputs dir:
one service. Jobs submitted to one are read, streamed, cancelled and fetched through the other; both
sign with the same secrets; and when one node dies with jobs in hand, the other finishes them and
every webhook arrives, once per webhook-id."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import ServerProcess, WebhookReceiver, wait_until

NOOP = "/hidream/noop"


def node(tmp_path: Path, name: str, database_url: str, **env: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / name,
        env={
            "HIDREAM_DATABASE_URL": database_url,
            "HIDREAM_OUTPUTS_DIR": str(tmp_path / "shared-outputs"),
            "HIDREAM_WEBHOOK_SECRET": "",  # generated once, kept in the database, shared by both
            "HIDREAM_LEASE_SECONDS": "2",
            **env,
        },
    )


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a, b = node(tmp_path, "a", postgres_url), node(tmp_path, "b", postgres_url)
    with a, b:
        yield a, b


def status(server: ServerProcess, request_id: str) -> str:
    response = httpx.get(f"{server.url}{NOOP}/requests/{request_id}/status", timeout=10)
    assert response.status_code in (200, 202), response.text
    value: str = response.json()["status"]
    return value


def test_one_service_through_either_node(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    with httpx.Client(timeout=10) as http:
        submitted = http.post(f"{a.url}{NOOP}", json={"seed": 1, "num_steps": 3, "step_seconds": 0.1}).json()
        request_id = submitted["request_id"]
        # Streamed through B while either node's worker runs it, to the end.
        with http.stream("GET", f"{b.url}{NOOP}/requests/{request_id}/status/stream") as stream:
            events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1]["status"] == "COMPLETED"
        result = http.get(f"{b.url}{NOOP}/requests/{request_id}").json()
        image = http.get(result["images"][0]["url"].replace(a.url, b.url))  # the shared outputs dir
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

        # Cancelled through B while a worker (on either node) runs it.
        long = http.post(f"{a.url}{NOOP}", json={"num_steps": 200, "step_seconds": 0.05}).json()["request_id"]
        wait_until(lambda: status(b, long) == "IN_PROGRESS", timeout=15)
        assert http.put(f"{b.url}{NOOP}/requests/{long}/cancel").status_code == 202
        wait_until(lambda: http.get(f"{a.url}/v1/requests/{long}").json()["status"] == "CANCELLED", timeout=10)

        # One secret for the service: rotated through A, served by B at once.
        assert (
            http.get(f"{a.url}/v1/webhooks/default/secret").json()
            == http.get(f"{b.url}/v1/webhooks/default/secret").json()
        )
        rotated = http.post(f"{a.url}/v1/webhooks/default/secret/rotate").json()["key"]
        wait_until(lambda: http.get(f"{b.url}/v1/webhooks/default/secret").json()["key"] == rotated, timeout=5)
        assert http.get(f"{b.url}/.well-known/jwks.json").json() == http.get(f"{a.url}/.well-known/jwks.json").json()


def test_a_dead_nodes_jobs_finish_on_the_other_and_every_webhook_arrives_once(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pair
    jobs = 50
    with WebhookReceiver() as receiver, httpx.Client(timeout=10) as http:
        ids = []
        for n in range(jobs):
            body = {"seed": n, "num_steps": 4, "step_seconds": 0.05}
            response = http.post(f"{a.url}{NOOP}", params={"fal_webhook": receiver.url()}, json=body)
            assert response.status_code == 200
            ids.append(response.json()["request_id"])
        wait_until(lambda: len(receiver.for_path("/hook")) >= 5, timeout=30)
        a.kill_group()  # the server and its worker, mid-job, with webhooks pending

        wait_until(lambda: len({w.headers["x-fal-webhook-request-id"] for w in receiver.for_path("/hook")}) == jobs, 90)
        for request_id in ids:
            job = http.get(f"{b.url}/v1/requests/{request_id}").json()
            assert job["status"] == "COMPLETED" and job["outcome"] == "succeeded", job

    bodies: dict[str, set[bytes]] = defaultdict(set)
    for webhook in receiver.for_path("/hook"):
        bodies[webhook.headers["x-fal-webhook-request-id"]].add(webhook.body)
        assert json.loads(webhook.body)["status"] == "OK"
    assert sorted(bodies) == sorted(ids)
    assert all(len(sent) == 1 for sent in bodies.values()), "a webhook-id carried two different bodies"
