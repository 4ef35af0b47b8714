"""Fair between API keys, on a live server with one worker: keys with queued work take turns, a key
has a queue limit (429 in each dialect's shape), noop's pretend work is capped, and a synchronous
call whose caller hangs up does not keep its job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import openai
import pytest

from tests.integration.harness import ServerProcess, WebhookReceiver, wait_until

KEYS = ("key-a", "key-b", "key-c")
QUEUE_LIMIT = 10
NOOP = "/hidream/noop"
LONG = {"num_steps": 40, "step_seconds": 0.25}  # 10 s unless cancelled
HANG_UP = httpx.Timeout(10.0, read=1.5)  # the caller gives up waiting after 1.5 s and disconnects


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "HIDREAM_API_KEYS": ",".join(KEYS),
        "HIDREAM_MAX_QUEUED_PER_KEY": str(QUEUE_LIMIT),
        "HIDREAM_WORKERS": "1",
        # OpenAI's and WaveSpeed's routes answer for I1-Fast; its jobs never get to run here.
        "HIDREAM_MODELS": "fast",
        "HIDREAM_ALLOW_PRIVATE_URLS": "true",  # the webhook receiver is on loopback
    }
    with ServerProcess(tmp_path_factory.mktemp("fair"), env=env) as running:
        yield running


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """Cancels whatever a test left queued or running, so that the next one finds the worker free."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
        for key in KEYS:
            for job in requests_of(client, key):
                if job["status"] in ("IN_QUEUE", "IN_PROGRESS"):
                    client.put(job["cancel_url"], headers=auth(key))
        wait_until(lambda: all(not active(client, key) for key in KEYS), timeout=30)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}"}


def requests_of(http: httpx.Client, key: str) -> list[dict[str, Any]]:
    """The key's requests, newest first."""
    listed: list[dict[str, Any]] = http.get("/v1/requests?limit=100", headers=auth(key)).json()["requests"]
    return listed


def active(http: httpx.Client, key: str) -> list[dict[str, Any]]:
    return [job for job in requests_of(http, key) if job["status"] in ("IN_QUEUE", "IN_PROGRESS")]


def status(http: httpx.Client, key: str, request_id: str) -> dict[str, Any]:
    """The request's summary: `status` is the job's own (fal's status route shows CANCELLED as COMPLETED)."""
    body: dict[str, Any] = http.get(f"/v1/requests/{request_id}", headers=auth(key)).json()
    return body


def submit(http: httpx.Client, key: str, body: dict[str, Any]) -> str:
    response = http.post(NOOP, json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    request_id: str = response.json()["request_id"]
    return request_id


def occupy_the_worker(http: httpx.Client, key: str) -> str:
    running = submit(http, key, LONG)
    wait_until(lambda: status(http, key, running)["status"] == "IN_PROGRESS", timeout=15)
    return running


def started(job: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(job["started_at"])


def test_a_key_s_one_job_runs_second_not_behind_another_key_s_ten(http: httpx.Client) -> None:
    a, b = KEYS[0], KEYS[1]
    one_second = {"num_steps": 4, "step_seconds": 0.25}
    first = submit(http, a, one_second)
    wait_until(lambda: status(http, a, first)["status"] == "IN_PROGRESS", timeout=15)
    then_nine = [submit(http, a, one_second) for _ in range(9)]
    latecomer = submit(http, b, {})

    assert status(http, b, latecomer)["queue_position"] == 0  # next, ahead of key a's nine
    assert [status(http, a, job)["queue_position"] for job in then_nine] == list(range(1, 10))
    wait_until(lambda: status(http, b, latecomer)["status"] == "COMPLETED", timeout=20)

    b_started = started(requests_of(http, b)[0])
    started_before_b = [
        job["request_id"] for job in requests_of(http, a) if job["started_at"] and started(job) < b_started
    ]
    assert started_before_b == [first]


def test_a_key_over_its_queue_limit_gets_a_429_in_each_dialect_s_shape(
    http: httpx.Client, server: ServerProcess
) -> None:
    a, b = KEYS[0], KEYS[1]
    occupy_the_worker(http, a)
    for _ in range(QUEUE_LIMIT):
        submit(http, a, {})

    fal = http.post(NOOP, json={}, headers=auth(a))
    replicate = http.post("/v1/models/hidream/noop/predictions", json={"input": {}}, headers=auth(a))
    wavespeed = http.post("/api/v3/wavespeed-ai/hidream-i1-fast", json={"prompt": "a fox"}, headers=auth(a))
    client = openai.OpenAI(api_key=a, base_url=f"{server.url}/v1", max_retries=0)
    with client, pytest.raises(openai.RateLimitError) as refused:
        client.images.generate(model="hidream-i1-fast", prompt="a fox")

    assert fal.status_code == 429 and f"{QUEUE_LIMIT} requests queued" in fal.json()["detail"]
    assert replicate.status_code == 429 and replicate.json()["status"] == 429
    assert replicate.json()["title"] == "Too Many Requests" and "queued" in replicate.json()["detail"]
    assert wavespeed.status_code == 429 and wavespeed.json()["code"] == 429 and wavespeed.json()["data"] is None
    assert refused.value.code == "rate_limit_exceeded" and "queued" in refused.value.message
    for response in (fal, replicate, wavespeed, refused.value.response):
        assert response.headers["retry-after"] == "10"
    assert len(active(http, a)) == 1 + QUEUE_LIMIT  # nothing written for the refused ones
    submit(http, b, {})  # another key's queue is its own


def test_noop_pretending_past_its_cap_is_a_422(http: httpx.Client) -> None:
    before = len(requests_of(http, KEYS[0]))
    fal = http.post(NOOP, json={"num_steps": 1000, "step_seconds": 10}, headers=auth(KEYS[0]))
    replicate = http.post(
        "/v1/models/hidream/noop/predictions",
        json={"input": {"num_steps": 61, "step_seconds": 1}},
        headers=auth(KEYS[0]),
    )

    assert fal.status_code == 422 and "at most 60 s" in fal.json()["detail"][0]["msg"]
    assert replicate.status_code == 422 and "at most 60 s" in replicate.json()["detail"]
    assert len(requests_of(http, KEYS[0])) == before


def hang_up(call: Callable[[], object]) -> None:
    with pytest.raises(httpx.ReadTimeout):
        call()


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [(f"/run{NOOP}", LONG, {}), ("/v1/models/hidream/noop/predictions", {"input": LONG}, {"Prefer": "wait=60"})],
    ids=["fal run", "replicate wait"],
)
def test_a_running_synchronous_job_is_cancelled_when_its_caller_hangs_up(
    http: httpx.Client, server: ServerProcess, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    key = KEYS[2]

    hang_up(lambda: httpx.post(f"{server.url}{path}", json=body, headers={**auth(key), **headers}, timeout=HANG_UP))

    (job,) = requests_of(http, key)[:1]
    wait_until(lambda: status(http, key, job["request_id"])["status"] == "CANCELLED", timeout=10)


def test_a_queued_openai_job_is_cancelled_when_its_caller_hangs_up(http: httpx.Client, server: ServerProcess) -> None:
    key = KEYS[2]
    occupy_the_worker(http, KEYS[0])
    body = {"model": "hidream-i1-fast", "prompt": "a fox"}

    hang_up(lambda: httpx.post(f"{server.url}/v1/images/generations", json=body, headers=auth(key), timeout=HANG_UP))

    (job,) = requests_of(http, key)[:1]
    assert job["dialect"] == "openai"
    wait_until(lambda: status(http, key, job["request_id"])["status"] == "CANCELLED", timeout=10)


def test_a_synchronous_job_with_a_webhook_outlives_its_caller(
    http: httpx.Client, server: ServerProcess, receiver: WebhookReceiver
) -> None:
    key = KEYS[2]
    headers = {**auth(key), "Prefer": "wait=60"}
    body = {"input": {"num_steps": 4, "step_seconds": 0.5}, "webhook": receiver.url("/done")}
    url = f"{server.url}/v1/models/hidream/noop/predictions"

    hang_up(lambda: httpx.post(url, json=body, headers=headers, timeout=HANG_UP))

    (delivered,) = receiver.wait_for("/done", timeout=15)
    assert delivered.json()["status"] == "succeeded"
