"""The fal queue wire contract, checked over plain HTTP against a live server."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.harness import ServerProcess, wait_until

I1 = "fal-ai/hidream-i1-full"


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def run_to_completion(http: httpx.Client, app: str, body: dict[str, Any]) -> tuple[dict[str, Any], httpx.Response]:
    submitted = http.post(f"/{app}", json=body)
    assert submitted.status_code == 200, submitted.text
    handle = submitted.json()
    wait_until(lambda: http.get(handle["status_url"]).status_code == 200)
    return handle, http.get(handle["response_url"])


def test_submit_answers_with_the_queue_handle(http: httpx.Client, server: ServerProcess) -> None:
    response = http.post("/hidream/noop", json={"prompt": "x"})

    body = response.json()
    assert response.status_code == 200
    assert response.headers["x-fal-request-id"] == body["request_id"]
    assert body["status"] == "IN_QUEUE"
    assert body["queue_position"] >= 0
    base = f"{server.url}/hidream/noop/requests/{body['request_id']}"
    assert body["response_url"] == base
    assert body["status_url"] == base + "/status"
    assert body["cancel_url"] == base + "/cancel"


def test_status_is_202_while_pending_and_200_when_completed(http: httpx.Client) -> None:
    handle = http.post("/hidream/noop", json={"num_steps": 10, "step_seconds": 0.05}).json()

    pending = http.get(handle["status_url"])
    assert pending.status_code == 202
    assert pending.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert "logs" in pending.json()
    early = http.get(handle["response_url"])
    assert early.status_code == 400
    assert "in progress" in early.json()["detail"]

    wait_until(lambda: http.get(handle["status_url"]).status_code == 200)
    done = http.get(handle["status_url"], params={"logs": "1"}).json()
    assert done["status"] == "COMPLETED"
    assert done["metrics"]["inference_time"] >= 0
    assert "error" not in done


def test_status_stream_sends_each_state_and_closes_after_completed(http: httpx.Client) -> None:
    handle = http.post("/hidream/noop", json={"num_steps": 5, "step_seconds": 0.05}).json()

    events = []
    with http.stream("GET", handle["status_url"] + "/stream", params={"logs": "1"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))

    assert events[-1]["status"] == "COMPLETED"
    assert {"IN_PROGRESS", "COMPLETED"} <= {event["status"] for event in events}
    final_steps = [line["message"] for line in events[-1]["logs"] if line["message"].startswith("step ")]
    assert final_steps == [f"step {n}/5" for n in range(1, 6)]


def test_unknown_input_field_is_rejected_with_fal_detail(http: httpx.Client) -> None:
    response = http.post(f"/{I1}", json={"prompt": "x", "num_inference_step": 4})

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "num_inference_step"]
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "num_inference_steps": 51}, "num_inference_steps"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "num_images": 5}, "num_images"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "image_size": "huge"}, "image_size"),
        ({"prompt": "x", "image_size": {"width": 10, "height": 512}}, "image_size"),
    ],
)
def test_out_of_range_inputs_are_rejected(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    response = http.post(f"/{I1}", json=body)

    assert response.status_code == 422
    assert any(field in error["loc"] for error in response.json()["detail"])


def test_extreme_aspect_ratio_is_rejected_with_a_reason(http: httpx.Client) -> None:
    response = http.post(f"/{I1}", json={"prompt": "x", "image_size": {"width": 4096, "height": 512}})

    assert response.status_code == 422
    assert "4:1" in response.text


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"\xff\xfe",
        # Python's json reads these; JSON has no such numbers, and they used to reach the error renderer.
        b'{"prompt": "x", "guidance_scale": NaN}',
        b'{"prompt": "x", "guidance_scale": -Infinity}',
        b'{"prompt": "x", "seed": 1e400}',
        b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}",
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_422(http: httpx.Client, raw: bytes) -> None:
    response = http.post(f"/{I1}", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_an_oversized_body_is_a_413(http: httpx.Client) -> None:
    # Bodies may hold one image input as a data URI (20 MiB by default, base64), plus 1 MiB.
    response = http.post(f"/{I1}", json={"prompt": "x" * (30 << 20)})

    assert response.status_code == 413
    assert "request body is larger than" in response.json()["detail"]


def test_a_webhook_that_is_not_an_http_url_is_a_422(http: httpx.Client) -> None:
    response = http.post("/hidream/noop", params={"fal_webhook": "file:///etc/passwd"}, json={})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_a_webhook_url_with_a_control_character_is_a_422(http: httpx.Client) -> None:
    response = http.post("/hidream/noop", params={"fal_webhook": "http://127.0.0.1:9/a\x00b"}, json={})

    assert response.status_code == 422
    assert "control character" in response.json()["detail"][0]["msg"]


def test_unknown_app_and_unknown_request_are_404s(http: httpx.Client) -> None:
    assert http.post("/fal-ai/flux/dev", json={"prompt": "x"}).status_code == 404
    assert http.get("/hidream/noop/requests/00000000-0000-0000-0000-000000000000/status").status_code == 404
    assert http.get("/hidream/noop/requests/nope").status_code == 404
    assert http.put("/hidream/noop/requests/nope/cancel").status_code == 404


def test_a_request_is_not_found_under_another_app(http: httpx.Client) -> None:
    handle = http.post("/hidream/noop", json={}).json()

    assert http.get(f"/fal-ai/hidream-i1-full/requests/{handle['request_id']}/status").status_code == 404


def test_bad_logs_flag_is_a_422(http: httpx.Client) -> None:
    handle = http.post("/hidream/noop", json={}).json()

    assert http.get(handle["status_url"], params={"logs": "maybe"}).status_code == 422


def test_failed_job_reports_its_error_everywhere(http: httpx.Client) -> None:
    handle, result = run_to_completion(http, "hidream/noop", {"fail_with": "simulated failure"})

    assert result.status_code == 422
    assert result.json()["detail"][0]["msg"] == "simulated failure"
    status = http.get(handle["status_url"]).json()
    assert status["status"] == "COMPLETED"
    assert status["error"] == "simulated failure"
    assert status["error_type"] == "validation_error"


def test_i1_output_reports_the_size_really_rendered(http: httpx.Client) -> None:
    body = {"prompt": "a wide view", "image_size": "landscape_16_9", "num_inference_steps": 2, "output_format": "png"}
    handle, result = run_to_completion(http, I1, body)

    (image,) = result.json()["images"]
    png = http.get(image["url"])
    assert png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as decoded:
        assert decoded.size == (image["width"], image["height"])
    assert image["width"] > image["height"]  # the aspect ratio is kept, the area is the model's
    logs = http.get(handle["status_url"], params={"logs": "true"}).json()["logs"]
    assert any("requested 1024x576" in line["message"] for line in logs)


def test_same_seed_same_image_and_each_image_has_its_own_seed(http: httpx.Client) -> None:
    body = {"prompt": "a cat", "seed": 42, "num_inference_steps": 2, "output_format": "png", "sync_mode": True}
    _, first = run_to_completion(http, "fal-ai/hidream-i1-dev", body)
    _, again = run_to_completion(http, "fal-ai/hidream-i1-dev", body)
    _, pair = run_to_completion(http, "fal-ai/hidream-i1-dev", {**body, "num_images": 2})
    _, other = run_to_completion(http, "fal-ai/hidream-i1-dev", {**body, "seed": 43})

    def pixels(result: httpx.Response, index: int = 0) -> np.ndarray[Any, Any]:
        url = result.json()["images"][index]["url"]
        assert url.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
            return np.asarray(image, dtype=np.int16)

    def close(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
        # A batch of two runs other matrix kernels than a batch of one: allow float rounding, not more.
        return int(np.abs(a - b).max()) <= 3

    assert np.array_equal(pixels(first), pixels(again))
    assert close(pixels(pair, 0), pixels(first))  # image i depends on seed + i only
    assert close(pixels(pair, 1), pixels(other))
    assert np.abs(pixels(first) - pixels(other)).mean() > 5


def test_sync_mode_returns_data_uris_and_stores_no_file(http: httpx.Client, server: ServerProcess) -> None:
    handle, result = run_to_completion(http, "hidream/noop", {"sync_mode": True})

    assert result.json()["images"][0]["url"].startswith("data:image/png;base64,")
    assert not (server.data_dir / "outputs" / handle["request_id"]).exists()


def test_idempotency_key_returns_the_same_request_and_rejects_a_different_body(http: httpx.Client) -> None:
    headers = {"Idempotency-Key": "order-1234"}
    first = http.post("/hidream/noop", json={"prompt": "a"}, headers=headers)
    repeat = http.post("/hidream/noop", json={"prompt": "a"}, headers=headers)
    different = http.post("/hidream/noop", json={"prompt": "b"}, headers=headers)

    assert first.status_code == repeat.status_code == 200
    assert repeat.json()["request_id"] == first.json()["request_id"]
    assert different.status_code == 422
    assert "Idempotency-Key" in different.text


def test_stored_files_are_not_reachable_by_path_tricks(http: httpx.Client) -> None:
    for path in ("/files/../hidream.sqlite3", "/files/x/..%2F..%2Fhidream.sqlite3", "/files/..%2Fhidream.sqlite3/x"):
        response = http.get(path)
        assert response.status_code in (404, 405)
        assert b"SQLite format" not in response.content
    assert http.get("/files/nope/0.png").status_code == 404
