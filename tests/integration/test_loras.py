"""LoRAs per request on a live server with tiny weights: tiny LoRA files made here, served by a real
HTTP server on loopback that counts what it is asked for, uploaded, and sent by the official clients."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fal_client
import httpx
import numpy as np
import openai
import pytest
import replicate
import wavespeed
from PIL import Image

from tests.integration.harness import ServerProcess, wait_until
from tests.lora_files import FileHost, flux_lora_file, kohya_lora_file, layer_shapes, lora_file

FAST = "fal-ai/hidream-i1-fast"
E1_FULL = "fal-ai/hidream-e1-full"
I1_IMAGE_TO_IMAGE = "fal-ai/hidream-i1-full/image-to-image"
BODY = {"prompt": "a lighthouse", "seed": 5, "num_inference_steps": 3, "output_format": "png"}
MAX_LORA_BYTES = 64 << 10  # tiny LoRAs are about 15 KB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[ServerProcess]:
    """This module's server (the conftest clients' too): a LoRA cap the tests can exceed, and room
    for three adapters in a pipeline, so that a fourth LoRA unloads one."""
    env = {
        "HIDREAM_MAX_LORA_BYTES": str(MAX_LORA_BYTES),
        "HIDREAM_MAX_LOADED_LORAS": "3",
        "HIDREAM_MAX_LOADED_PIPELINES": "3",  # I1 Fast, I1 Full (image-to-image) and E1-Full: no reloads
    }
    with ServerProcess(tmp_path_factory.mktemp("loras"), weights=str(tiny_weights), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def shapes(tiny_weights: Path) -> dict[str, tuple[int, int]]:
    return layer_shapes(tiny_weights / "HiDream-I1-Full" / "transformer")


@pytest.fixture(scope="module")
def host(shapes: dict[str, tuple[int, int]]) -> Iterator[FileHost]:
    """LoRA `a` in both layouts, and `b`, another LoRA."""
    serving = FileHost()
    serving.add("/a.safetensors", lora_file(shapes, seed=1))
    serving.add("/a-comfyui.safetensors", lora_file(shapes, seed=1, prefix="diffusion_model."))
    serving.add("/b.safetensors", lora_file(shapes, seed=2))
    yield serving
    serving.close()


@pytest.fixture(scope="module")
def lora_a(host: FileHost) -> str:
    return host.url("/a.safetensors")


@pytest.fixture(scope="module")
def lora_b(host: FileHost) -> str:
    return host.url("/b.safetensors")


def run(server: ServerProcess, body: dict[str, Any], endpoint: str = FAST) -> dict[str, Any]:
    """fal's synchronous run: the job's result."""
    response = httpx.post(f"{server.url}/run/{endpoint}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def pixels(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(httpx.get(url).content)).convert("RGB"), dtype=np.float64)


def image(server: ServerProcess, body: dict[str, Any], endpoint: str = FAST) -> np.ndarray:
    return pixels(run(server, body, endpoint)["images"][0]["url"])


def changed(one: np.ndarray, other: np.ndarray) -> bool:
    """Visibly different (a LoRA's effect), not float noise."""
    return float(np.abs(one - other).mean()) > 1.0


def queued(server: ServerProcess, body: dict[str, Any]) -> str:
    """Submit through fal's queue; the request id."""
    response = httpx.post(f"{server.url}/{FAST}", json=body)
    assert response.status_code == 200, response.text
    request_id: str = response.json()["request_id"]
    return request_id


def finished(server: ServerProcess, request_id: str) -> tuple[dict[str, Any], list[str]]:
    """A queued job's result and log lines, once it has completed."""
    base = f"{server.url}/{FAST}/requests/{request_id}"
    wait_until(lambda: httpx.get(f"{base}/status").json()["status"] == "COMPLETED", timeout=60)
    logs = [line["message"] for line in httpx.get(f"{base}/status", params={"logs": 1}).json()["logs"]]
    return httpx.get(base).json(), logs


def uploaded(server: ServerProcess, content: bytes, name: str = "style.safetensors") -> str:
    response = httpx.post(f"{server.url}/files/upload", content=content, headers={"X-Fal-File-Name": name})
    assert response.status_code == 200, response.text
    url: str = response.json()["access_url"]
    return url


def png_data_uri(width: int = 64, height: int = 48) -> str:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8")).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def with_a(server: ServerProcess, lora_a: str) -> np.ndarray:
    """BODY rendered with LoRA a at scale 1: what every client sending it must get back."""
    return image(server, {**BODY, "loras": [{"path": lora_a, "scale": 1.0}]})


# -- applying them -------------------------------------------------------------------------------


def test_a_lora_changes_the_image_with_its_scale_and_leaves_no_trace(
    server: ServerProcess, lora_a: str, with_a: np.ndarray
) -> None:
    base = image(server, BODY)
    half = image(server, {**BODY, "loras": [{"path": lora_a, "scale": 0.5}]})
    after = image(server, BODY)

    assert changed(with_a, base) and changed(half, base) and changed(half, with_a)
    assert np.array_equal(after, base)  # bit for bit: the LoRA is off again


def test_the_comfyui_layout_loads_the_same_adapter(server: ServerProcess, host: FileHost, with_a: np.ndarray) -> None:
    comfyui = host.add("/a-comfyui.safetensors", host.files["/a-comfyui.safetensors"])

    assert np.array_equal(image(server, {**BODY, "loras": [{"path": comfyui}]}), with_a)


def test_a_cached_lora_is_not_downloaded_again(server: ServerProcess, host: FileHost, shapes: Any) -> None:
    content = lora_file(shapes, seed=3)
    url = host.add("/cached.safetensors", content)

    first = queued(server, {**BODY, "loras": [{"path": url}]})
    second = queued(server, {**BODY, "prompt": "a lighthouse at night", "loras": [{"path": url, "scale": 0.7}]})

    assert host.gets["/cached.safetensors"] == 1
    assert finished(server, first)[0]["images"] and finished(server, second)[0]["images"]
    stored = httpx.get(f"{server.url}/v1/requests/{second}").json()["input"]
    assert stored["loras"] == [{"path": url, "scale": 0.7, "sha256": hashlib.sha256(content).hexdigest()}]


def test_jobs_with_other_loras_in_one_wave_each_get_their_own(
    server: ServerProcess, lora_a: str, lora_b: str, with_a: np.ndarray
) -> None:
    with_b = image(server, {**BODY, "loras": [{"path": lora_b}]})
    # The worker is busy with this while the wave is queued, so that it leases the wave together.
    busy = httpx.post(f"{server.url}/hidream/noop", json={"num_steps": 1, "step_seconds": 1.5}).json()["request_id"]
    wait_until(lambda: httpx.get(f"{server.url}/hidream/noop/requests/{busy}/status").json()["status"] != "IN_QUEUE")
    wave = [
        {**BODY, "loras": [{"path": lora_a}]},
        {**BODY, "loras": [{"path": lora_b}]},
        {**BODY, "seed": 6, "loras": [{"path": lora_a}]},
    ]
    with ThreadPoolExecutor(len(wave)) as pool:
        ids = list(pool.map(lambda body: queued(server, body), wave))
    outcomes = [finished(server, request_id) for request_id in ids]
    results = [pixels(result["images"][0]["url"]) for result, _ in outcomes]
    logs = [lines for _, lines in outcomes]

    assert "batched with 1 other job(s) in one pipeline call" in logs[0]
    assert not any("batched with" in line for line in logs[1])
    # Each as it renders alone, up to float reduction order across batch sizes.
    assert np.abs(results[0] - with_a).mean() < 1.0 and np.abs(results[1] - with_b).mean() < 1.0
    assert changed(results[0], results[1])


def test_more_loras_than_a_worker_keeps_unload_the_least_recent(
    server: ServerProcess, host: FileHost, shapes: Any
) -> None:
    for seed in range(10, 14):  # four new files; the worker keeps three adapters
        run(server, {**BODY, "loras": [{"path": host.add(f"/many-{seed}.safetensors", lora_file(shapes, seed=seed))}]})

    assert "to make room" in server.log()


def test_image_to_image_takes_loras(server: ServerProcess, lora_a: str) -> None:
    body = {"image_url": png_data_uri(), "prompt": "a harbour", "seed": 2, "num_inference_steps": 4, "strength": 0.8}
    body["output_format"] = "png"

    assert changed(
        image(server, {**body, "loras": [{"path": lora_a}]}, I1_IMAGE_TO_IMAGE), image(server, body, I1_IMAGE_TO_IMAGE)
    )


# -- E1-Full's own adapter beside them -----------------------------------------------------------

E1_BODY = {
    "prompt": "make it snow",
    "target_image_description": "a snowy harbour",
    "seed": 1,
    "num_inference_steps": 4,
    "output_format": "png",
}


def test_e1_full_keeps_its_own_adapter_beside_a_request_lora(server: ServerProcess, lora_a: str) -> None:
    body = {**E1_BODY, "image_url": png_data_uri()}
    base = image(server, body, E1_FULL)
    # At scale 0 a request LoRA adds exact zeros: anything else would mean E1's own adapter was switched off.
    at_zero = image(server, {**body, "loras": [{"path": lora_a, "scale": 0.0}]}, E1_FULL)
    at_one = image(server, {**body, "loras": [{"path": lora_a, "scale": 1.0}]}, E1_FULL)
    after = image(server, body, E1_FULL)

    assert np.array_equal(at_zero, base)
    assert changed(at_one, base)
    assert np.array_equal(after, base)


def test_request_loras_apply_in_e1s_refine_stage_too(server: ServerProcess, lora_a: str) -> None:
    # refine_strength 1: every step is the refine stage, where E1's own adapter is off.
    body = {**E1_BODY, "image_url": png_data_uri(), "refine_strength": 1.0}

    assert changed(image(server, {**body, "loras": [{"path": lora_a}]}, E1_FULL), image(server, body, E1_FULL))


# -- refused at submit ---------------------------------------------------------------------------

WRONG_FILES = {
    "random bytes": (bytes(range(256)) * 8, 422, "not a safetensors file"),
    "a pickle": (pickle.dumps({"lora_A": [0.0] * 8}, protocol=4), 422, "pickled checkpoint"),
    "another architecture": (
        flux_lora_file(),
        422,
        "'transformer.transformer_blocks.0.attn.to_k.lora_A.weight' targets 'transformer_blocks.0.attn.to_k'",
    ),
    "kohya's own layout": (kohya_lora_file(), 422, "'lora_unet_double_stream_blocks_0_block_attn1_to_q.alpha'"),
    "over the byte cap": (bytes(MAX_LORA_BYTES + 1), 413, f"the LoRA is larger than {MAX_LORA_BYTES} bytes"),
}


@pytest.mark.parametrize("kind", list(WRONG_FILES))
def test_a_wrong_file_is_refused_at_submit(server: ServerProcess, kind: str) -> None:
    content, status, words = WRONG_FILES[kind]
    url = uploaded(server, content)

    response = httpx.post(f"{server.url}/{FAST}", json={**BODY, "loras": [{"path": url}]})

    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    if status == 413:
        assert detail == words
    else:
        assert detail[0]["loc"] == ["body", "loras", 0, "path"] and words in detail[0]["msg"]


def test_what_a_private_address_served_is_not_described(server: ServerProcess, host: FileHost) -> None:
    url = host.add("/flux.safetensors", flux_lora_file())

    response = httpx.post(f"{server.url}/{FAST}", json={**BODY, "loras": [{"path": url}]})

    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert (
        message.startswith("could not download the LoRA: no usable LoRA came back")
        and "transformer_blocks" not in message
    )


def test_a_file_with_another_digest_than_the_one_pinned_is_refused(server: ServerProcess, shapes: Any) -> None:
    url = uploaded(server, lora_file(shapes, seed=20))

    response = httpx.post(f"{server.url}/{FAST}", json={**BODY, "loras": [{"path": url, "sha256": "0" * 64}]})

    assert response.status_code == 422 and "not the sha256 given" in response.json()["detail"][0]["msg"]


def test_a_wrong_file_is_refused_in_each_dialects_shape(server: ServerProcess) -> None:
    url = uploaded(server, flux_lora_file())
    unknown_key = "'transformer.transformer_blocks.0.attn.to_k.lora_A.weight'"

    by_replicate = httpx.post(
        f"{server.url}/v1/models/hidream-ai/hidream-i1-fast/predictions",
        json={"input": {"prompt": "x", "lora_weights": url}},
    )
    by_wavespeed = httpx.post(
        f"{server.url}/api/v3/wavespeed-ai/hidream-i1-fast", json={"prompt": "x", "loras": [{"path": url}]}
    )
    by_openai = httpx.post(
        f"{server.url}/v1/images/generations",
        json={"model": "hidream-i1-fast", "prompt": "x", "loras": [{"path": url, "scale": 1}]},
    )

    assert by_replicate.status_code == 422
    (invalid,) = by_replicate.json()["invalid_fields"]
    assert invalid["field"] == "loras.0.path" and unknown_key in invalid["description"]
    assert by_wavespeed.status_code == 400
    assert by_wavespeed.json()["code"] == 400 and unknown_key in by_wavespeed.json()["message"]
    assert by_openai.status_code == 400
    error = by_openai.json()["error"]
    assert error["param"] == "loras.0.path" and unknown_key in error["message"]


def test_o1_refuses_loras(server: ServerProcess, lora_a: str) -> None:
    response = httpx.post(f"{server.url}/fal-ai/hidream-o1-image", json={"prompt": "x", "loras": [{"path": lora_a}]})

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "loras"] and error["msg"].startswith("HiDream-O1 takes no LoRAs")


def test_hugging_face_sources_need_hub_access(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.url}/{FAST}", json={**BODY, "loras": [{"path": "someone/style-lora/style.safetensors@main"}]}
    )

    assert response.status_code == 422
    assert "no hub access (HIDREAM_LORA_HUB)" in response.json()["detail"][0]["msg"]


# -- the official clients ------------------------------------------------------------------------


def test_fal_client_sends_loras(fal: fal_client.SyncClient, lora_a: str, with_a: np.ndarray) -> None:
    result = fal.subscribe(FAST, arguments={**BODY, "loras": [{"path": lora_a, "scale": 1.0}]})

    assert np.array_equal(pixels(result["images"][0]["url"]), with_a)


def test_replicate_client_sends_lora_weights_and_an_extra_lora(server: ServerProcess, lora_a: str, lora_b: str) -> None:
    expected = image(server, {**BODY, "loras": [{"path": lora_a, "scale": 1.0}, {"path": lora_b, "scale": 0.6}]})
    client = replicate.Client(api_token="unused", base_url=server.url)
    try:
        (output,) = client.run(
            "hidream-ai/hidream-i1-fast",
            input={
                "prompt": BODY["prompt"], "seed": BODY["seed"], "num_inference_steps": 3, "output_format": "png",
                "lora_weights": lora_a, "lora_scale": 1.0, "extra_lora": lora_b, "extra_lora_scale": 0.6,
            },
        )  # fmt: skip
    finally:
        client._client.close()

    assert np.array_equal(pixels(str(output)), expected)


def test_wavespeed_client_sends_loras(server: ServerProcess, lora_a: str, with_a: np.ndarray) -> None:
    client = wavespeed.Client(api_key="unused", base_url=server.url)

    result = client.run(
        "wavespeed-ai/hidream-i1-fast",
        {"prompt": BODY["prompt"], "seed": BODY["seed"], "num_inference_steps": 3, "output_format": "png",
         "loras": [{"path": lora_a, "scale": 1.0}]},
        poll_interval=0.1,
    )  # fmt: skip

    (url,) = result["outputs"]
    assert np.array_equal(pixels(url), with_a)


def test_openai_client_sends_loras_in_extra_body(oai: openai.OpenAI, lora_a: str, with_a: np.ndarray) -> None:
    response = oai.images.generate(
        model="hidream-i1-fast",
        prompt=str(BODY["prompt"]),
        extra_body={"seed": BODY["seed"], "num_inference_steps": 3, "loras": [{"path": lora_a, "scale": 1.0}]},
    )

    assert response.data is not None and response.data[0].url is not None
    assert np.array_equal(pixels(response.data[0].url), with_a)


def test_openai_edits_take_loras_as_json_in_their_form(server: ServerProcess, oai: openai.OpenAI, lora_a: str) -> None:
    picture = png_data_uri()
    loras = [{"path": lora_a, "scale": 1.0}]
    expected = image(
        server,
        {"image_url": picture, "prompt": "make it snow", "seed": 1, "num_inference_steps": 4, "output_format": "png",
         "loras": loras},
        E1_FULL,
    )  # fmt: skip

    response = oai.images.edit(
        model="hidream-e1-full",
        image=("harbour.png", base64.b64decode(picture.split(",", 1)[1]), "image/png"),
        prompt="make it snow",
        extra_body={"seed": 1, "num_inference_steps": 4, "loras": json.dumps(loras)},
    )

    assert response.data is not None and response.data[0].url is not None
    assert np.array_equal(pixels(response.data[0].url), expected)
