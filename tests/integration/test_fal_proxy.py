"""fal's proxy path on a live server with API keys: what fal's JS client sends with `proxyUrl` reaches
the right route with the caller's key, and nothing reaches any other host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import ServerProcess, WebhookReceiver, wait_until

KEY = "proxy-test-key"
PROXY = "/api/fal/proxy"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("proxy"), env={"HIDREAM_API_KEYS": KEY}) as running:
        yield running


def through_proxy(
    server: ServerProcess, method: str, target: str, *, key: str | None = KEY, body: Any = None
) -> httpx.Response:
    headers = {"x-fal-target-url": target}
    if key is not None:
        headers["Authorization"] = f"Key {key}"
    return httpx.request(method, f"{server.url}{PROXY}", headers=headers, json=body, timeout=30)


def test_queue_submit_status_and_result_through_the_proxy(keyed_server: ServerProcess) -> None:
    submitted = through_proxy(keyed_server, "POST", "https://queue.fal.run/hidream/noop", body={"prompt": "p"})
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["request_id"]
    status_url = submitted.json()["status_url"]
    assert status_url.startswith(keyed_server.url)  # our own URLs, not fal's

    # What the JS client builds from the app id, and the absolute URL the server gave out.
    app_status = f"https://queue.fal.run/hidream/noop/requests/{request_id}/status?logs=1"
    wait_until(lambda: through_proxy(keyed_server, "GET", app_status).status_code == 200)
    by_app = through_proxy(keyed_server, "GET", app_status)
    by_url = through_proxy(keyed_server, "GET", status_url)
    result = through_proxy(keyed_server, "GET", f"https://queue.fal.run/hidream/noop/requests/{request_id}")

    assert by_app.json()["status"] == "COMPLETED" and by_app.json()["request_id"] == request_id
    assert isinstance(by_app.json()["logs"], list)  # the target's query string (logs=1) was applied
    assert by_url.json() == {**by_app.json(), "logs": None}
    assert result.status_code == 200 and result.json()["images"][0]["url"].startswith(keyed_server.url)


def test_the_sync_host_answers_the_result(keyed_server: ServerProcess) -> None:
    ran = through_proxy(keyed_server, "POST", "https://fal.run/hidream/noop", body={"prompt": "p"})

    assert ran.status_code == 200, ran.text
    image = httpx.get(ran.json()["images"][0]["url"])
    assert image.content.startswith(b"\x89PNG")


def test_storage_upload_through_the_proxy(keyed_server: ServerProcess, tmp_path: Path) -> None:
    initiated = through_proxy(
        keyed_server,
        "POST",
        "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
        body={"file_name": "a.bin", "content_type": "application/octet-stream"},
    )
    assert initiated.status_code == 200, initiated.text
    upload_url, file_url = initiated.json()["upload_url"], initiated.json()["file_url"]

    put = httpx.put(upload_url, content=b"abc")  # the client PUTs straight to the URL it was given

    assert put.status_code == 200
    assert upload_url.startswith(keyed_server.url) and httpx.get(file_url).content == b"abc"


def test_the_api_key_still_applies(keyed_server: ServerProcess) -> None:
    missing = through_proxy(keyed_server, "POST", "https://queue.fal.run/hidream/noop", key=None, body={})
    wrong = through_proxy(keyed_server, "POST", "https://fal.run/hidream/noop", key="not-a-key", body={})

    assert missing.status_code == 401 and "detail" in missing.json()
    assert wrong.status_code == 401 and "detail" in wrong.json()


def test_other_hosts_are_refused_and_never_contacted(keyed_server: ServerProcess) -> None:
    with WebhookReceiver() as receiver:
        for method in ("GET", "POST"):
            refused = through_proxy(keyed_server, method, receiver.url("/anything"), body={"x": 1})
            assert refused.status_code == 412
            assert "fetches nothing" in refused.json()["detail"]
        missing = httpx.post(f"{keyed_server.url}{PROXY}", headers={"Authorization": f"Key {KEY}"}, json={})

        assert missing.status_code == 400 and "x-fal-target-url" in missing.json()["detail"]
        assert receiver.received == []  # (it records POSTs)
