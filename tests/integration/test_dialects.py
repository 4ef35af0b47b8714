"""Each vendor's official client, pointed at our server, works unchanged."""

from __future__ import annotations

import base64
import io
import socket
from collections.abc import Iterator
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
from standardwebhooks import Webhook

from tests.integration.harness import TEST_SECRET, ServerProcess, WebhookReceiver, wait_until
from webhooks.signing import wavespeed_verify

TINY = {"prompt": "a lighthouse", "num_inference_steps": 2, "seed": 3}


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


# -- Replicate -----------------------------------------------------------------------------------


def close_replicate(client: replicate.Client) -> None:
    # The replicate client never closes the httpx client it builds lazily.
    client._client.close()


@pytest.fixture
def rep(server: ServerProcess) -> Iterator[replicate.Client]:
    client = replicate.Client(api_token="unused", base_url=server.url)
    yield client
    close_replicate(client)


def test_replicate_run_returns_the_images_with_and_without_waiting(rep: replicate.Client) -> None:
    waited = rep.run("hidream-ai/hidream-i1-fast", input={**TINY, "output_format": "png"})
    polled = rep.run("hidream-ai/hidream-i1-dev", input={**TINY, "num_outputs": 2}, wait=False)

    assert isinstance(waited, list) and len(waited) == 1
    assert png_size(httpx.get(str(waited[0])).content) == (64, 64)
    assert len(polled) == 2 and str(polled[0]).endswith(".webp")


def test_replicate_runs_e1_with_a_local_file(rep: replicate.Client, tmp_path: Path) -> None:
    picture = tmp_path / "room.png"
    Image.new("RGB", (64, 64), "green").save(picture)

    with picture.open("rb") as image:  # the client uploads it to /v1/files and sends the URL
        output = rep.run(
            "hidream-ai/hidream-e1-full",
            input={"image": image, "prompt": "paint the walls red", "num_inference_steps": 2, "seed": 4},
        )

    assert png_size(httpx.get(str(output[0])).content) == (64, 64)


def test_an_image_sent_inline_is_echoed_as_the_url_of_its_stored_copy(server: ServerProcess) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(buffer, format="PNG")
    inline = f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"
    created = httpx.post(
        f"{server.url}/v1/models/hidream-ai/hidream-e1-full/predictions",
        json={"input": {"image": inline, "prompt": "red walls", "num_inference_steps": 2}},
    )
    assert created.status_code == 201, created.text

    echoed = httpx.get(f"{server.url}/v1/predictions/{created.json()['id']}").json()["input"]
    assert echoed["prompt"] == "red walls"
    assert echoed["image"].startswith(f"{server.url}/files/input-")  # not the image's bytes again
    assert httpx.get(echoed["image"]).status_code == 200


def test_replicate_create_poll_and_cancel(rep: replicate.Client) -> None:
    prediction = rep.predictions.create(model="hidream/noop", input={"num_steps": 200, "step_seconds": 0.05})
    assert prediction.status in ("starting", "processing")
    wait_until(lambda: rep.predictions.get(prediction.id).status == "processing")

    rep.predictions.cancel(prediction.id)
    prediction.reload()
    wait_until(lambda: rep.predictions.get(prediction.id).status == "canceled")
    final = rep.predictions.get(prediction.id)
    assert final.error == "Request was cancelled"
    assert "step 1/200" in (final.logs or "")


def test_replicate_version_create_wait_header_and_list(rep: replicate.Client) -> None:
    created = rep.predictions.create(version="hidream/noop", input={"prompt": "p"}, wait=5)
    listed = rep.predictions.list()

    assert created.status == "succeeded"
    assert created.output and created.metrics is not None and "predict_time" in created.metrics
    assert created.id in {prediction.id for prediction in listed.results}


def test_replicate_wait_that_runs_out_answers_starting(rep: replicate.Client) -> None:
    # predictions.create(model=..., wait=...) drops `wait` in replicate 1.0.7; models.predictions keeps it.
    prediction = rep.models.predictions.create(
        model="hidream/noop", input={"num_steps": 100, "step_seconds": 0.05}, wait=1
    )

    assert prediction.status == "starting"
    rep.predictions.cancel(prediction.id)


def test_replicate_webhook_events_are_signed_predictions(rep: replicate.Client, receiver: WebhookReceiver) -> None:
    client = rep
    prediction = client.predictions.create(
        model="hidream/noop",
        input={"num_steps": 6, "step_seconds": 0.2},
        webhook=receiver.url("/replicate"),
        webhook_events_filter=["start", "logs", "completed"],
    )

    wait_until(lambda: any(h.json()["status"] == "succeeded" for h in receiver.for_path("/replicate")))
    hooks = receiver.for_path("/replicate")
    secret = client.webhooks.default.secret()
    for hook in hooks:
        replicate.webhook.Webhooks.validate(headers=hook.headers, body=hook.body.decode(), secret=secret, tolerance=300)
    statuses = [hook.json()["status"] for hook in hooks]
    assert statuses[0] == "processing" and statuses[-1] == "succeeded"
    assert len(hooks) >= 3  # start, at least one logs event, completed
    assert {hook.json()["id"] for hook in hooks} == {prediction.id}
    assert len({hook.headers["webhook-id"] for hook in hooks}) == len(hooks)  # distinct events
    assert hooks[-1].json()["output"]


def test_replicate_file_upload_gives_a_url(rep: replicate.Client, tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    Image.new("RGB", (8, 8), "orange").save(picture)

    uploaded = rep.files.create(picture, metadata={"purpose": "test"})

    assert uploaded.size == picture.stat().st_size
    assert httpx.get(uploaded.urls["get"]).content == picture.read_bytes()


def test_replicate_errors_are_replicate_shaped(server: ServerProcess, rep: replicate.Client) -> None:
    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        rep.predictions.create(model="hidream-ai/hidream-i1-full", input={"prompt": "x", "num_outputs": 9})
    assert raised.value.status == 422
    assert "num_outputs" in str(raised.value.detail)

    missing = httpx.get(f"{server.url}/v1/predictions/nope").json()
    assert missing["status"] == 404 and missing["title"] == "Not Found"
    for cursor in ("abc", "9" * 30, "\u00b2"):  # "²" passes str.isdigit() but not int()
        bad_cursor = httpx.get(f"{server.url}/v1/predictions", params={"cursor": cursor})
        assert bad_cursor.status_code == 400 and bad_cursor.json()["detail"] == "cursor is not valid"


# -- WaveSpeed -----------------------------------------------------------------------------------


def test_wavespeed_run_polls_to_the_outputs(server: ServerProcess) -> None:
    client = wavespeed.Client(api_key="unused", base_url=server.url)

    result = client.run("wavespeed-ai/hidream-i1-fast", {**TINY, "size": "1024*768"}, poll_interval=0.1)

    (url,) = result["outputs"]
    width, height = png_size(httpx.get(url).content)
    assert width > height


def test_wavespeed_uploads_and_edits_with_e1(server: ServerProcess, tmp_path: Path) -> None:
    client = wavespeed.Client(api_key="unused", base_url=server.url)
    picture = tmp_path / "wide.png"
    Image.new("RGB", (128, 64), "white").save(picture)

    image = client.upload(str(picture))  # a ticket from /api/v3/media/uploads, then a PUT

    result = client.run(
        "wavespeed-ai/hidream-e1-full", {"image": image, "prompt": "add a cat", "seed": 2}, poll_interval=0.1
    )

    (url,) = result["outputs"]
    assert png_size(httpx.get(url).content) == (91, 45)  # the source's 2:1 at the 64² area


def test_wavespeed_sync_mode_and_base64_output(server: ServerProcess) -> None:
    client = wavespeed.Client(api_key="unused", base_url=server.url)

    result = client.run(
        "wavespeed-ai/hidream-i1-dev",
        {**TINY, "enable_base64_output": True, "output_format": "png"},
        enable_sync_mode=True,
    )

    (output,) = result["outputs"]
    assert png_size(base64.b64decode(output.split(",", 1)[1])) == (64, 64)


def test_wavespeed_webhook_carries_the_bare_data_signed_v3(server: ServerProcess, receiver: WebhookReceiver) -> None:
    submitted = httpx.post(
        f"{server.url}/api/v3/wavespeed-ai/hidream-i1-fast", params={"webhook": receiver.url("/ws")}, json=TINY
    ).json()

    (hook,) = receiver.wait_for("/ws")
    wavespeed_verify(TEST_SECRET, hook.headers, hook.body)
    assert hook.headers["webhook-signature"].startswith("v3,")
    data = hook.json()
    assert data["id"] == submitted["data"]["id"] and data["status"] == "completed"
    assert len(data["outputs"]) == 1


def test_wavespeed_errors_use_its_envelope(server: ServerProcess) -> None:
    bad = httpx.post(f"{server.url}/api/v3/wavespeed-ai/hidream-i1-full", json={"prompt": "x", "size": "99*99"})
    unknown = httpx.post(f"{server.url}/api/v3/wavespeed-ai/flux", json={"prompt": "x"})

    assert bad.status_code == 400
    assert bad.json()["code"] == 400 and "size" in bad.json()["message"] and bad.json()["data"] is None
    assert unknown.status_code == 404 and unknown.json()["code"] == 404


# -- OpenAI --------------------------------------------------------------------------------------


def test_openai_generate_urls_and_base64(oai: openai.OpenAI) -> None:
    extra: dict[str, Any] = {"seed": 5, "num_inference_steps": 2}
    by_url = oai.images.generate(model="hidream-i1-fast", prompt="a fox", n=2, size="1024x1024", extra_body=extra)
    inline = oai.images.generate(
        model="hidream-i1-dev", prompt="a fox", response_format="b64_json", output_format="webp", extra_body=extra
    )

    assert len(by_url.data) == 2 and by_url.data[0].url is not None
    assert png_size(httpx.get(by_url.data[0].url).content) == (64, 64)
    assert by_url.size == "64x64"
    assert inline.data[0].b64_json is not None
    with Image.open(io.BytesIO(base64.b64decode(inline.data[0].b64_json))) as image:
        assert image.format == "WEBP"


def test_openai_errors_are_openai_shaped(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.images.generate(model="hidream-i1-full", prompt="x", size="huge")
    with pytest.raises(openai.NotFoundError):
        oai.images.generate(model="dall-e-3", prompt="x")

    assert bad.value.param == "size"


def test_openai_edits_with_e1_and_image_to_image(oai: openai.OpenAI, tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    Image.new("RGB", (96, 64), "orange").save(picture)
    extra: dict[str, Any] = {"seed": 3, "num_inference_steps": 2}

    with picture.open("rb") as image:
        edited = oai.images.edit(model="hidream-e1-full", image=image, prompt="make it blue", extra_body=extra)
    with picture.open("rb") as image:
        restyled = oai.images.edit(
            model="hidream-i1-full", image=image, prompt="a blue car", size="1024x1024", response_format="b64_json"
        )

    assert edited.data[0].url is not None
    assert png_size(httpx.get(edited.data[0].url).content) == (78, 52)  # the source's 3:2 at the 64² area
    assert restyled.data[0].b64_json is not None and restyled.size == "64x64"


def test_openai_edits_check_their_input(oai: openai.OpenAI, tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(picture)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")

    with pytest.raises(openai.BadRequestError):
        oai.images.edit(image=[], prompt="make it blue")
    with picture.open("rb") as first, picture.open("rb") as second, pytest.raises(openai.BadRequestError) as two:
        oai.images.edit(model="hidream-e1-full", image=[first, second], prompt="blue")
    with picture.open("rb") as image, pytest.raises(openai.NotFoundError):
        oai.images.edit(model="dall-e-2", image=image, prompt="blue")
    with not_an_image.open("rb") as text, pytest.raises(openai.BadRequestError) as undecodable:
        oai.images.edit(model="hidream-e1-full", image=text, prompt="blue")

    assert "one image" in str(two.value)
    assert "JPEG, PNG or WebP" in str(undecodable.value) and undecodable.value.param == "image_url"


def test_openai_lists_the_models(oai: openai.OpenAI) -> None:
    assert {model.id for model in oai.models.list()} == {
        "hidream-i1-full",
        "hidream-i1-dev",
        "hidream-i1-fast",
        "hidream-e1-full",
        "hidream-e1-1",
        "hidream-o1-image",
        "hidream-o1-image-dev",
    }


# -- fal sync and storage ------------------------------------------------------------------------


def test_fal_run_answers_with_the_result(fal: fal_client.SyncClient) -> None:
    result = fal.run("fal-ai/hidream-i1-fast", arguments=TINY)

    assert result["images"][0]["width"] == 64
    assert result["seed"] == 3


def test_fal_upload_file_returns_a_url_we_serve(
    fal: fal_client.SyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = tmp_path / "dog.png"
    Image.new("RGB", (4, 4), "blue").save(picture)
    made: list[httpx.Client] = []
    make_cdn_client = fal_client.SyncClient._get_cdn_client

    def tracked(self: fal_client.SyncClient) -> httpx.Client:
        made.append(make_cdn_client(self))  # fal-client never closes the client it makes per upload
        return made[-1]

    monkeypatch.setattr(fal_client.SyncClient, "_get_cdn_client", tracked)
    try:
        url = fal.upload_file(picture)
    finally:
        for client in made:
            client.close()

    assert httpx.get(url).content == picture.read_bytes()


def test_fal_storage_initiate_and_put(server: ServerProcess) -> None:
    handle = httpx.post(
        f"{server.url}/storage/upload/initiate", json={"file_name": "a b.png", "content_type": "image/png"}
    ).json()
    put = httpx.put(handle["upload_url"], content=b"\x89PNG fake")
    again = httpx.put(handle["upload_url"], content=b"other")

    assert put.status_code == 200
    assert httpx.get(handle["file_url"]).content == b"\x89PNG fake"
    assert again.status_code == 404  # an upload URL works once


def test_upload_urls_and_storage_tokens_outlive_the_process_that_issued_them(tmp_path: Path) -> None:
    """On Modal several web containers answer one deployment: an upload URL or a storage token from
    one must work on another. A restarted server on the same data dir stands in for the other."""
    env = {"HIDREAM_API_KEYS": "the-key"}
    key = {"authorization": "Key the-key"}
    with ServerProcess(tmp_path, env=env) as first:
        handle = httpx.post(f"{first.url}/storage/upload/initiate", json={"file_name": "a.png"}, headers=key).json()
        token = httpx.post(f"{first.url}/storage/auth/token", headers=key).json()["token"]
    with ServerProcess(tmp_path, env=env) as second:
        upload_url = handle["upload_url"].replace(first.url, second.url)
        forged = upload_url.replace("/a.png", "/b.png")  # the name is part of what is signed
        assert httpx.put(forged, content=b"x").status_code == 404
        assert httpx.put(upload_url, content=b"\x89PNG fake").status_code == 200
        # The token alone, no API key, is enough to upload.
        uploaded = httpx.post(
            f"{second.url}/files/upload",
            content=b"y",
            headers={"authorization": f"Bearer {token}", "x-fal-file-name": "t.bin"},
        )
        assert uploaded.status_code == 200, uploaded.text
        stored = httpx.get(handle["file_url"].replace(first.url, second.url), headers=key)
        assert stored.content == b"\x89PNG fake"


def test_catalogue_lists_every_endpoint_with_its_names_and_schema(server: ServerProcess) -> None:
    models = {model["id"]: model for model in httpx.get(f"{server.url}/models").json()["models"]}

    full = models["fal-ai/hidream-i1-full"]
    assert full["names"] == {
        "fal": "fal-ai/hidream-i1-full",
        "replicate": "hidream-ai/hidream-i1-full",
        "wavespeed": "wavespeed-ai/hidream-i1-full",
        "openai": "hidream-i1-full",
    }
    assert full["defaults"]["num_inference_steps"] == 50
    assert "prompt" in full["input_schema"]["required"]
    assert models["fal-ai/hidream-i1-dev"]["defaults"]["num_inference_steps"] == 28


def test_webhooks_of_fal_jobs_still_verify_after_the_dialects(server: ServerProcess, receiver: WebhookReceiver) -> None:
    httpx.post(f"{server.url}/hidream/noop", params={"fal_webhook": receiver.url("/fal")}, json={})
    (hook,) = receiver.wait_for("/fal")
    assert Webhook(TEST_SECRET).verify(hook.body, hook.headers)["status"] == "OK"


def test_openai_edits_refuse_an_oversized_body_before_reading_it(server: ServerProcess) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        "POST /v1/images/edits HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {1 << 40}\r\n\r\n"  # a terabyte announced; none of it sent
    )
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head.encode())
        answer = b""
        while b"request body is larger than" not in answer and (chunk := connection.recv(65536)):
            answer += chunk  # the status line and the JSON body may come in separate segments

    assert answer.startswith(b"HTTP/1.1 413")
    assert b"request body is larger than" in answer
