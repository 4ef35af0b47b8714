"""Replicate's streams, models and pinned versions, through the official `replicate` client against a
live server with API keys (two tenants) and tiny weights."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import replicate
from PIL import Image
from replicate.stream import ServerSentEvent

from tests.integration.harness import ServerProcess, wait_until

ALICE, BOB = "alice-key", "bob-key"
KEYS = {"HIDREAM_API_KEYS": f"{ALICE},{BOB}"}
PREVIEW_EVERY = 2
AS_ALICE = {"Authorization": f"Bearer {ALICE}"}
I1 = "hidream-ai/hidream-i1-dev"
STEPS = 24  # a preview every other step, flushed every 0.04 s: several while it runs, on any machine
NOOP = "hidream/noop"

Event = ServerSentEvent.EventType


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[ServerProcess]:
    env = {**KEYS, "HIDREAM_PREVIEW_EVERY_STEPS": str(PREVIEW_EVERY), "HIDREAM_HEARTBEAT_SECONDS": "0.02"}
    with ServerProcess(tmp_path_factory.mktemp("replicate"), weights=str(tiny_weights), env=env) as running:
        yield running


@contextlib.contextmanager
def client(server: ServerProcess, key: str = ALICE, **headers: str) -> Iterator[replicate.Client]:
    made = replicate.Client(api_token=key, base_url=server.url, headers=headers)
    yield made
    made._client.close()  # the client never closes the httpx client it builds


@pytest.fixture
def alice(keyed: ServerProcess) -> Iterator[replicate.Client]:
    with client(keyed) as made:
        yield made


def image_size(data: bytes, format: str | None = None) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # the whole image decodes, not only its header
        assert format is None or image.format == format
        return image.size


def fetched_size(url: str) -> tuple[int, int]:
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    return image_size(response.content)


def raw_events(url: str, **headers: str) -> list[tuple[str, str]]:
    """A stream's (event, data) pairs, read without a client."""
    with httpx.stream("GET", url, headers={"Accept": "text/event-stream", **headers}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        blocks = response.read().decode().split("\n\n")
    pairs = []
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            assert fields["id"], block  # the Python client drops events without one
            pairs.append((fields["event"], fields["data"]))
    return pairs


def test_stream_sends_progress_logs_then_each_image_url_then_done(alice: replicate.Client) -> None:
    events = list(alice.stream(I1, input={"prompt": "a fox", "num_inference_steps": 3, "num_outputs": 2}))

    kinds = [event.event for event in events]
    first_output = kinds.index(Event.OUTPUT)
    progress = [event.data for event in events[:first_output] if event.event is Event.LOGS]
    assert "step 1/3" in progress and "step 3/3" in progress
    # There was a preview at step 2, but it is not sent unless asked for.
    assert kinds[first_output:] == [Event.OUTPUT, Event.OUTPUT, Event.DONE]
    assert events[-1].data == "{}"
    assert [fetched_size(event.data) for event in events[first_output:-1]] == [(64, 64), (64, 64)]


def test_previews_come_as_data_uris_when_the_client_asks(keyed: ServerProcess) -> None:
    asking = replicate.Client(api_token=ALICE, base_url=keyed.url, headers={"Hidream-Previews": "true"})

    async def collect() -> list[ServerSentEvent]:  # the header goes with every request, the stream's too
        stream = await asking.async_stream(I1, input={"prompt": "a fox", "num_inference_steps": STEPS})
        try:
            return [event async for event in stream]
        finally:
            await asking._async_client.aclose()

    events = asyncio.run(collect())

    *previews, result = [event.data for event in events if event.event is Event.OUTPUT]
    assert previews, [event.event for event in events]
    for preview in previews:  # the client hands data URIs over as files
        assert preview.url.startswith("data:image/jpeg;base64,")
        width, height = image_size(preview.read(), "JPEG")  # small: the latents' own size
        assert 0 < width <= 64 and 0 < height <= 64
    assert isinstance(result, str) and fetched_size(result) == (64, 64)
    assert events[-1].event is Event.DONE


def test_failed_and_cancelled_predictions_end_their_streams(alice: replicate.Client) -> None:
    with pytest.raises(RuntimeError, match="out of ink"):
        list(alice.stream(NOOP, input={"fail_with": "out of ink"}))

    failed = alice.predictions.create(model=NOOP, input={"num_steps": 2, "fail_with": "out of ink"})
    assert raw_events(failed.urls["stream"])[-2:] == [
        ("error", '{"detail":"out of ink"}'),
        ("done", '{"reason":"error"}'),
    ]

    running = alice.predictions.create(model=NOOP, input={"num_steps": 200, "step_seconds": 0.05})
    wait_until(lambda: alice.predictions.get(running.id).status == "processing")
    threading.Timer(0.3, alice.predictions.cancel, args=(running.id,)).start()  # while the stream is open
    cancelled = raw_events(running.urls["stream"])
    assert ("logs", "step 1/200") in cancelled
    assert cancelled[-1] == ("done", '{"reason":"canceled"}')


def test_a_stream_takes_the_predictions_own_key_or_its_signed_url(keyed: ServerProcess) -> None:
    created = httpx.post(
        f"{keyed.url}/v1/models/{NOOP}/predictions",
        json={"input": {"num_steps": 1}, "stream": True},  # replicate.stream() sends `stream`
        headers=AS_ALICE,
    )
    assert created.status_code == 201, created.text
    signed = created.json()["urls"]["stream"]
    bare = signed.split("?")[0]

    def status(url: str, key: str | None) -> int:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.get(url, headers=headers, timeout=30).status_code

    assert status(signed, None) == 200  # what the JS client does: no key on the stream
    assert status(bare, ALICE) == 200  # what the Python client does
    assert status(signed, BOB) == 404  # another key sees nothing, signed URL or not
    assert status(bare, BOB) == 404
    assert status(bare, None) == 401
    forged = signed[:-1] + ("1" if signed.endswith("0") else "0")
    assert status(forged, None) == 404


def test_models_get_and_versions_describe_what_run_accepts(alice: replicate.Client) -> None:
    model = alice.models.get(I1)
    version = model.latest_version
    assert version is not None and len(version.id) == 64
    assert [listed.id for listed in model.versions.list().results] == [version.id]
    assert model.versions.get(version.id).id == version.id
    schemas = version.openapi_schema["components"]["schemas"]
    assert schemas["Input"]["required"] == ["prompt"] and "num_outputs" in schemas["Input"]["properties"]
    assert schemas["Output"]["type"] == "array" and "x-cog-array-type" not in schemas["Output"]
    noop = alice.models.get(NOOP).latest_version
    assert noop is not None and noop.id != version.id  # each model its own

    output = alice.run(f"{I1}:{version.id}", input={"prompt": "a fox", "num_inference_steps": 2})

    assert isinstance(output, list) and fetched_size(output[0]) == (64, 64)
    assert alice.predictions.list().results[0].version == version.id


def test_a_version_that_names_nothing_served_starts_no_job(alice: replicate.Client, keyed: ServerProcess) -> None:
    before = [prediction.id for prediction in alice.predictions.list().results]
    unknown = "0" * 64
    with pytest.raises(replicate.exceptions.ReplicateError) as refused:
        alice.run(f"{NOOP}:{unknown}", input={})
    assert refused.value.status == 422 and "version" in str(refused.value.detail)
    # The rest of a reference counts too: `owner/name:<wrong id>` is not taken for `owner/name`.
    wrong_id = httpx.post(
        f"{keyed.url}/v1/predictions",
        json={"version": f"{NOOP}:{unknown}", "input": {}},
        headers=AS_ALICE,
    )
    assert wrong_id.status_code == 422 and wrong_id.json()["invalid_fields"][0]["field"] == "version"
    missing = httpx.get(f"{keyed.url}/v1/models/{NOOP}/versions/{unknown}", headers=AS_ALICE)
    assert missing.status_code == 404 and missing.json()["title"] == "Not Found"

    assert [prediction.id for prediction in alice.predictions.list().results] == before
    # The model's name as its version (what predictions showed as `version` before there were
    # versions): the prediction and the client's look-up afterwards both take it.
    assert alice.run(f"{NOOP}:{NOOP}", input={})


def test_a_pinned_version_still_runs_after_a_restart(alice: replicate.Client, tmp_path: Path) -> None:
    pinned = alice.models.get(NOOP).latest_version
    assert pinned is not None

    # Another process on another data dir: nothing in common with the first but the code.
    with ServerProcess(tmp_path, env=KEYS) as restarted, client(restarted) as pinning:
        output = pinning.run(f"{NOOP}:{pinned.id}", input={"seed": 1})
        assert isinstance(output, list) and fetched_size(output[0]) == (1, 1)
