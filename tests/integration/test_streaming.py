"""Streaming as the hosted APIs stream, through their official Python clients: fal's `stream` and
status stream, OpenAI's `stream=True` with partial images; and live previews of the forming image."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fal_client
import httpx
import openai
import pytest
from PIL import Image

from tests.integration.harness import ServerProcess, wait_until

I1 = "fal-ai/hidream-i1-full"
STREAMED_I1 = {"prompt": "a lighthouse at dusk", "seed": 3, "num_inference_steps": 40, "output_format": "png"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[ServerProcess]:
    """A server whose workers flush their events every 0.04 s and preview every other step, so that a
    tiny job of 40 steps (about a second) streams several progress events and previews."""
    env = {"HIDREAM_HEARTBEAT_SECONDS": "0.02", "HIDREAM_PREVIEW_EVERY_STEPS": "2"}
    with ServerProcess(tmp_path_factory.mktemp("data"), weights=str(tiny_weights), env=env) as running:
        yield running


def _image(data: bytes, kind: str) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == kind
    image.load()
    return image


def _data_uri_image(uri: str, kind: str) -> Image.Image:
    header, encoded = uri.split(",", 1)
    assert header == f"data:image/{kind.lower()};base64"
    return _image(base64.b64decode(encoded), kind)


def test_fal_stream_shows_progress_and_previews_then_the_result(
    fal: fal_client.SyncClient, server: ServerProcess
) -> None:
    events = list(fal.stream(I1, arguments=STREAMED_I1))

    *running, result = events
    progress = [event["progress"] for event in running if "progress" in event]
    assert progress, f"no progress event before the result: {events}"
    assert progress == sorted(progress, key=lambda p: p["step"])
    assert all(p["total"] == 40 for p in progress)
    previews = [event["images"][0] for event in running if "images" in event]
    assert previews, "no preview of the forming image"
    first = _data_uri_image(previews[0]["url"], "JPEG")
    assert 0 < previews[0]["preview_step"] < 40
    assert first.width == first.height < 64  # the tiny model's square output, previewed at latent size
    steps = [preview["preview_step"] for preview in previews]
    assert steps == sorted(set(steps))  # each preview once, newer each time
    # The log lines arrive once each, across the events, and end with the run's.
    lines = [line["message"] for event in running for line in event["logs"]]
    assert "step 1/40" in lines and len(lines) == len(set(lines))  # each line once
    assert result["seed"] == 3 and len(result["images"]) == 1
    fetched = httpx.get(result["images"][0]["url"], timeout=10)
    assert _image(fetched.content, "PNG").size == (64, 64)


def test_fal_stream_of_a_failing_run_ends_with_its_error(fal: fal_client.SyncClient) -> None:
    *_, last = fal.stream("hidream/noop", arguments={"fail_with": "on purpose"})
    assert last["error_type"] == "validation_error"
    assert last["detail"][0]["msg"] == "on purpose"


def test_fal_stream_refuses_bad_input_before_streaming(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/run/{I1}/stream", json={"prompt": ""}, timeout=10)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_a_hung_up_stream_cancels_its_run(server: ServerProcess) -> None:
    with httpx.stream(
        "POST", f"{server.url}/hidream/noop/stream", json={"num_steps": 100, "step_seconds": 0.1}, timeout=10
    ) as response:
        request_id = response.headers["X-Fal-Request-Id"]
        next(response.iter_lines())  # the first event: it was queued

    def status() -> dict[str, Any]:
        return httpx.get(f"{server.url}/v1/requests/{request_id}", timeout=10).json()

    assert wait_until(lambda: status()["outcome"] == "cancelled", timeout=20)


def test_status_stream_sends_each_log_line_once(server: ServerProcess) -> None:
    submitted = httpx.post(f"{server.url}/hidream/noop", json={"num_steps": 8, "step_seconds": 0.15}, timeout=10).json()
    received: list[str] = []
    with httpx.stream("GET", f"{submitted['status_url']}/stream", params={"logs": "1"}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    for event in events:
        received += [line["message"] for line in event["logs"]]
    assert events[-1]["status"] == "COMPLETED"
    logged = httpx.get(submitted["status_url"], params={"logs": "1"}, timeout=10).json()["logs"]
    assert received == [line["message"] for line in logged]
    assert len(events) > 2  # it streamed the run, not only its end


def test_requests_stream_carries_previews_for_the_playground(server: ServerProcess) -> None:
    submitted = httpx.post(f"{server.url}/{I1}", json=STREAMED_I1, timeout=10).json()
    url = f"{server.url}/v1/requests/{submitted['request_id']}/stream"
    with httpx.stream("GET", url, timeout=60) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    previews = [event["preview"] for event in events if "preview" in event]
    assert previews and all(_data_uri_image(p["image"], "JPEG") for p in previews)
    assert events[-1]["outcome"] == "succeeded"


def test_openai_generation_streams_partial_images_then_the_image(oai: openai.OpenAI) -> None:
    stream = oai.images.generate(
        model="hidream-i1-full",
        prompt="a lighthouse at dusk",
        stream=True,
        partial_images=2,
        extra_body={"num_inference_steps": 40, "seed": 5},
    )
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[-1] == "image_generation.completed"
    partials = [event for event in events if event.type == "image_generation.partial_image"]
    assert 1 <= len(partials) <= 2
    assert [event.partial_image_index for event in partials] == list(range(len(partials)))
    _image(base64.b64decode(partials[0].b64_json), "PNG")
    done = events[-1]
    assert done.size == "64x64" and done.output_format == "png"
    assert _image(base64.b64decode(done.b64_json), "PNG").size == (64, 64)


def test_openai_edit_streams_to_the_edited_image(oai: openai.OpenAI) -> None:
    source = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(source, format="PNG")
    stream = oai.images.edit(
        model="hidream-e1-1",
        image=("source.png", source.getvalue(), "image/png"),
        prompt="make it blue",
        stream=True,
        partial_images=1,
        output_format="jpeg",
        extra_body={"num_inference_steps": 12},
    )
    events = list(stream)
    assert events[-1].type == "image_edit.completed"
    assert all(event.type.startswith("image_edit.") for event in events)
    _image(base64.b64decode(events[-1].b64_json), "JPEG")


def test_openai_stream_reports_a_failure_as_an_error(oai: openai.OpenAI, server: ServerProcess) -> None:
    # A bad input is refused before the stream starts, in OpenAI's shape.
    try:
        oai.images.generate(model="hidream-i1-full", prompt="x", stream=True, partial_images=9)
    except openai.BadRequestError as error:
        assert error.param == "partial_images"
    else:
        raise AssertionError("partial_images=9 was accepted")


def test_an_unknown_get_is_a_404(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/no/such/page", timeout=10)
    assert response.status_code == 404
    assert "no such path" in response.json()["detail"]


def test_fal_async_client_streams(fal: fal_client.SyncClient, server: ServerProcess) -> None:
    async def streamed() -> list[dict[str, Any]]:
        client = fal_client.AsyncClient(key="unused")
        try:
            arguments = {"num_steps": 6, "step_seconds": 0.1, "seed": 9}
            return [event async for event in client.stream("hidream/noop", arguments=arguments)]
        finally:  # fal-client never closes its httpx clients (nor the one inside its transport)
            http = await client._client
            await http._transport._client.aclose()
            await http.aclose()

    events = asyncio.run(streamed())
    assert any(event.get("progress") for event in events[:-1])
    assert events[-1]["seed"] == 9
    assert httpx.get(events[-1]["images"][0]["url"], timeout=10).status_code == 200
