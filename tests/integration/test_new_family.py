"""A family added from one new module (toy_family.py) and one registry line is served through fal and
Replicate by their official clients, with no other file changed: its names, its weights, its worker."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import fal_client
import fal_client.client
import httpx
import pytest
import replicate
from PIL import Image

from hidream_service.config import Settings
from hidream_service.models.registry import FAMILIES, Registry
from hidream_service.server import create_app
from tests.integration.harness import TEST_SECRET, close_fal_client, serving
from tests.integration.toy_family import TOY, write_weights


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    weights = tmp_path_factory.mktemp("weights")
    write_weights(weights)  # the toy's folder only: no HiDream weights here
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        weights=str(weights),
        webhook_secret=TEST_SECRET,
        sqlite_synchronous="NORMAL",
    )
    with serving(create_app(settings, registry=Registry([*FAMILIES, TOY]))) as url:
        yield url


def pixels(url: str) -> tuple[tuple[int, int], list[tuple[int, int, int]]]:
    with Image.open(io.BytesIO(httpx.get(url, timeout=10).content)) as image:
        row = [image.getpixel((x, 0)) for x in range(image.width)]
        return image.size, row  # type: ignore[return-value]


def test_the_catalogue_lists_it_with_its_names_and_only_what_has_weights(toy_server: str) -> None:
    models = {model["id"]: model for model in httpx.get(f"{toy_server}/models").json()["models"]}

    assert set(models) == {"hidream/noop", "acme/toy"}
    names = models["acme/toy"]["names"]
    assert names == {"fal": "acme/toy", "replicate": "acme/toy", "wavespeed": None, "openai": None}


def test_fal_s_client_runs_it_with_progress(toy_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{toy_server}/")
    monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", f"{toy_server}/run/")
    client = fal_client.SyncClient(key="unused")
    try:
        handle = client.submit("acme/toy", arguments={"prompt": "a sunset", "num_inference_steps": 4})
        result = handle.get()
        status = handle.status(with_logs=True)
    finally:
        close_fal_client(client)

    size, row = pixels(result["images"][0]["url"])
    assert size == (32, 16) and row[0] == (255, 0, 0) and row[-1] == (0, 0, 255)  # the palette its weights hold
    steps = [line["message"] for line in status.logs if line["message"].startswith("step ")]  # type: ignore[attr-defined]
    assert steps == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    view = httpx.get(f"{toy_server}/v1/requests/{handle.request_id}").json()
    assert view["progress"] == {"step": 4, "total": 4}


def test_replicate_s_client_runs_it_in_its_own_names(toy_server: str, tmp_path: Path) -> None:
    client = replicate.Client(api_token="unused", base_url=toy_server)
    try:
        output = client.run("acme/toy", input={"prompt": "a sunset", "width": 48, "height": 16, "output_format": "png"})
        with pytest.raises(replicate.exceptions.ReplicateError, match="not served here"):
            client.run("hidream-ai/hidream-i1-full", input={"prompt": "x"})  # no weights: not served
    finally:
        client._client.close()

    size, row = pixels(str(output[0]))
    assert size == (48, 16) and row[0] == (255, 0, 0)
