"""The official fal-client package, pointed at our server, does everything a fal user does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fal_client
import fal_client.client
import httpx
import pytest
from standardwebhooks import Webhook

from tests.integration.harness import TEST_SECRET, ServerProcess, WebhookReceiver, close_fal_client

I1 = "fal-ai/hidream-i1-full"
TINY_I1_ARGS = {"prompt": "a red fox in snow", "seed": 7, "num_inference_steps": 2}


@pytest.fixture
def fal(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[fal_client.SyncClient]:
    # fal-client reads its hosts into module constants; point them at our server.
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{server.url}/")
    monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", f"{server.url}/run/")
    client = fal_client.SyncClient(key="unused-on-an-open-server")
    yield client
    close_fal_client(client)


def test_submit_with_webhook_delivers_a_signed_completion(
    fal: fal_client.SyncClient, receiver: WebhookReceiver
) -> None:
    handle = fal.submit(I1, arguments=TINY_I1_ARGS, webhook_url=receiver.url("/done"))

    (hook,) = receiver.wait_for("/done")
    payload = Webhook(TEST_SECRET).verify(hook.body, hook.headers)
    assert payload["request_id"] == handle.request_id
    assert payload["gateway_request_id"] == handle.request_id
    assert payload["status"] == "OK"
    assert payload["error"] is None
    image = payload["payload"]["images"][0]
    assert (image["width"], image["height"]) == (64, 64)  # tiny weights render a 64x64 area
    assert image["content_type"] == "image/jpeg"
    downloaded = httpx.get(image["url"], timeout=10)
    assert downloaded.status_code == 200
    assert len(downloaded.content) == image["file_size"]
    assert payload["payload"]["seed"] == 7


def test_status_with_logs_shows_denoising_progress(fal: fal_client.SyncClient) -> None:
    handle = fal.submit(I1, arguments={**TINY_I1_ARGS, "num_inference_steps": 3})
    result = handle.get()
    status = handle.status(with_logs=True)

    assert isinstance(status, fal_client.Completed)
    messages = [line["message"] for line in status.logs]
    assert [m for m in messages if m.startswith("step ")] == ["step 1/3", "step 2/3", "step 3/3"]
    assert status.metrics["inference_time"] > 0
    assert result["prompt"] == TINY_I1_ARGS["prompt"]


def test_subscribe_reports_queue_updates_and_returns_the_result(fal: fal_client.SyncClient) -> None:
    updates: list[Any] = []
    result = fal.subscribe(
        "fal-ai/hidream-i1-fast",
        arguments={"prompt": "a lighthouse", "seed": 1, "num_inference_steps": 2},
        with_logs=True,
        on_queue_update=updates.append,
    )

    assert len(result["images"]) == 1
    assert result["has_nsfw_concepts"] == [False]
    assert any(isinstance(update, fal_client.InProgress | fal_client.Queued) for update in updates)


def test_status_and_result_by_request_id(fal: fal_client.SyncClient) -> None:
    handle = fal.submit("hidream/noop", arguments={"prompt": "x"})
    handle.get()

    assert isinstance(fal.status("hidream/noop", handle.request_id), fal_client.Completed)
    assert fal.result("hidream/noop", handle.request_id)["images"][0]["width"] == 1


def test_cancel_a_running_job_ends_it_with_an_error_webhook(
    fal: fal_client.SyncClient, receiver: WebhookReceiver, server: ServerProcess
) -> None:
    handle = fal.submit(
        "hidream/noop", arguments={"num_steps": 200, "step_seconds": 0.05}, webhook_url=receiver.url("/cancel")
    )
    for status in handle.iter_events(with_logs=True, interval=0.05):
        if isinstance(status, fal_client.InProgress):
            break
    handle.cancel()

    (hook,) = receiver.wait_for("/cancel")
    payload = hook.json()
    assert payload["status"] == "ERROR"
    assert payload["error"] == "Request was cancelled"
    final = handle.status(with_logs=True)
    assert isinstance(final, fal_client.Completed)
    assert final.error == "Request was cancelled"
    assert final.error_type == "request_cancelled"
    steps = [line["message"] for line in final.logs if line["message"].startswith("step ")]
    assert len(steps) < 200  # it stopped early
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        handle.get()
    assert raised.value.status_code == 400


def test_cancel_a_queued_job_means_it_never_runs(fal: fal_client.SyncClient, receiver: WebhookReceiver) -> None:
    blocker = fal.submit("hidream/noop", arguments={"num_steps": 20, "step_seconds": 0.05})
    queued = fal.submit("hidream/noop", arguments={"prompt": "never"}, webhook_url=receiver.url("/queued"))
    queued.cancel()
    blocker.get()

    (hook,) = receiver.wait_for("/queued")
    assert hook.json()["status"] == "ERROR"
    final = queued.status(with_logs=True)
    assert isinstance(final, fal_client.Completed)
    assert final.error == "Request was cancelled"
    assert not any(line["message"].startswith("running on worker") for line in final.logs)
