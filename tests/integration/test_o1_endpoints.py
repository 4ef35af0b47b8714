"""HiDream-O1 through a live server and each vendor's official client, on the tiny checkpoint.

Tiny O1 renders the release's presets divided by 32: the 2K square is 64x64, 16:9 is 80x44.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client
import httpx
import openai
import pytest
import replicate
import wavespeed
from PIL import Image

from tests.integration.harness import ServerProcess

O1 = "fal-ai/hidream-o1-image"
O1_EDIT = "fal-ai/hidream-o1-image/edit"
O1_DEV_EDIT = "fal-ai/hidream-o1-image/dev/edit"
FAST = {"num_inference_steps": 2, "seed": 5}


def png(width: int, height: int, colour: str = "orange") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_fal_subscribe_renders_text_to_image_as_a_fal_document(fal: fal_client.SyncClient) -> None:
    updates: list[Any] = []

    result = fal.subscribe(
        O1,
        arguments={"prompt": "a ceramic mug", "image_size": "landscape_16_9", "output_format": "png", **FAST},
        with_logs=True,
        on_queue_update=updates.append,
    )

    (image,) = result["images"]
    assert (image["width"], image["height"]) == (80, 44)
    assert image["content_type"] == "image/png"
    downloaded = httpx.get(image["url"]).content
    assert len(downloaded) == image["file_size"] and image_size(downloaded) == (80, 44)
    assert result["seed"] == 5 and result["prompt"] == "a ceramic mug"
    assert result["has_nsfw_concepts"] == [False] and result["timings"]["inference"] > 0
    logs = [line["message"] for update in updates for line in (getattr(update, "logs", None) or [])]
    assert "step 2/2" in logs


def test_fal_edit_takes_several_references_by_data_uri_and_upload(
    fal: fal_client.SyncClient, server: ServerProcess
) -> None:
    uploaded = httpx.post(
        f"{server.url}/files/upload", content=png(50, 80, "blue"), headers={"x-fal-file-name": "b.png"}
    )

    result = fal.run(
        O1_EDIT,
        arguments={
            "prompt": "the mug from image 1 on the table from image 2",
            "reference_image_urls": [data_uri(png(64, 64)), uploaded.json()["access_url"]],
            "num_images": 2,
            **FAST,
        },
    )

    assert [(image["width"], image["height"]) for image in result["images"]] == [(64, 64), (64, 64)]
    assert result["has_nsfw_concepts"] == [False, False]


def test_dev_edit_keeps_the_original_aspect_of_one_reference(fal: fal_client.SyncClient) -> None:
    result = fal.run(
        O1_DEV_EDIT,
        arguments={
            "prompt": "make it blue",
            "reference_image_urls": [data_uri(png(120, 60))],
            "keep_original_aspect": True,
            **FAST,
        },
    )

    assert (result["images"][0]["width"], result["images"][0]["height"]) == (90, 44)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"prompt": "x", "reference_image_urls": []}, ["body", "reference_image_urls"]),
        ({"prompt": "x"}, ["body", "reference_image_urls"]),
        ({"prompt": "x", "reference_image_urls": ["a"] * 11}, ["body", "reference_image_urls"]),
        ({"prompt": "x", "reference_image_urls": [data_uri(png(8, 8)), "data:image/png;base64,bm9wZQ=="]},
         ["body", "reference_image_urls", 1]),
        ({"prompt": "x", "reference_image_urls": [data_uri(png(8, 8))], "num_inference_steps": 51},
         ["body", "num_inference_steps"]),
    ],
)  # fmt: skip
def test_bad_edit_inputs_are_422s_that_name_the_field(
    server: ServerProcess, body: dict[str, Any], loc: list[Any]
) -> None:
    response = httpx.post(f"{server.url}/{O1_EDIT}", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_dev_caps_its_steps_at_the_distilled_28(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/fal-ai/hidream-o1-image/dev", json={"prompt": "x", "num_inference_steps": 29})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]


def test_the_catalogue_shows_fal_s_defaults(server: ServerProcess) -> None:
    models = {model["id"]: model for model in httpx.get(f"{server.url}/models").json()["models"]}

    full, dev = models[O1_EDIT], models[O1_DEV_EDIT]
    assert full["defaults"]["num_inference_steps"] == 50 and full["defaults"]["guidance_scale"] == 5.0
    assert full["defaults"]["image_size"] == {"width": 2048, "height": 2048}
    assert dev["defaults"]["num_inference_steps"] == 28 and dev["defaults"]["guidance_scale"] == 0.0
    assert full["names"]["openai"] == "hidream-o1-image"
    assert set(full["input_schema"]["required"]) == {"prompt", "reference_image_urls"}


# -- OpenAI, Replicate, WaveSpeed -----------------------------------------------------------------


def test_openai_generates_with_o1(oai: openai.OpenAI) -> None:
    response = oai.images.generate(
        model="hidream-o1-image", prompt="a fox", size="1792x1024", extra_body={"num_inference_steps": 2}
    )

    assert response.size == "80x44"  # 1.75:1 snaps to the 16:9 preset


def test_openai_edits_with_several_images_as_o1_personalization(oai: openai.OpenAI, tmp_path: Path) -> None:
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(png(64, 64, "red"))
    second.write_bytes(png(96, 64, "green"))
    extra = {"num_inference_steps": 2, "seed": 1}

    with first.open("rb") as a, second.open("rb") as b:
        together = oai.images.edit(model="hidream-o1-image", image=[a, b], prompt="both together", extra_body=extra)
    with second.open("rb") as b:
        edited = oai.images.edit(model="hidream-o1-image-dev", image=b, prompt="make it blue", extra_body=extra)
    with second.open("rb") as b:
        square = oai.images.edit(
            model="hidream-o1-image", image=b, prompt="make it blue", size="1024x1024", extra_body=extra
        )

    assert together.size == "64x64"
    assert edited.size == "78x52"  # size "auto" with one image keeps its aspect ratio
    assert square.size == "64x64"


def test_openai_still_edits_one_image_with_the_other_models(oai: openai.OpenAI, tmp_path: Path) -> None:
    picture = tmp_path / "a.png"
    picture.write_bytes(png(8, 8))

    with picture.open("rb") as a, picture.open("rb") as b, pytest.raises(openai.BadRequestError) as two:
        oai.images.edit(model="hidream-e1-full", image=[a, b], prompt="blue")
    files = [picture.open("rb") for _ in range(11)]
    try:
        with pytest.raises(openai.BadRequestError) as eleven:
            oai.images.edit(model="hidream-o1-image", image=files, prompt="blue")
    finally:
        for handle in files:
            handle.close()

    assert "one image" in str(two.value) and "hidream-o1-image" in str(two.value)
    assert "up to 10 images" in str(eleven.value)


def test_replicate_and_wavespeed_generate_with_o1(server: ServerProcess) -> None:
    rep = replicate.Client(api_token="unused", base_url=server.url)
    try:
        urls = rep.run("hidream-ai/hidream-o1-image-dev", input={"prompt": "a fox", "num_inference_steps": 2})
    finally:
        rep._client.close()  # the replicate client never closes the httpx client it builds lazily
    outputs = wavespeed.Client(api_key="unused", base_url=server.url).run(
        "wavespeed-ai/hidream-o1-image-text-to-image",
        {"prompt": "a fox", "size": "2560*1440", "seed": 3},
        poll_interval=0.1,
    )["outputs"]

    assert image_size(httpx.get(str(urls[0])).content) == (64, 64)
    assert image_size(httpx.get(outputs[0]).content) == (80, 44)
