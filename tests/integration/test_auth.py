"""API keys: required when configured, and a job is visible only to the key that made it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fal_client
import fal_client.client
import httpx
import pytest

from tests.integration.harness import ServerProcess, close_fal_client

KEYS = ("alice-key", "bob-key")


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HIDREAM_API_KEYS": ",".join(KEYS)}
    with ServerProcess(tmp_path_factory.mktemp("auth"), env=env) as server:
        yield server


def test_missing_or_wrong_key_is_401(locked: ServerProcess) -> None:
    missing = httpx.post(f"{locked.url}/hidream/noop", json={})
    wrong = httpx.post(f"{locked.url}/hidream/noop", json={}, headers={"Authorization": "Key mallory"})
    garbled = httpx.post(f"{locked.url}/hidream/noop", json={}, headers={"Authorization": "alice-key"})

    assert missing.status_code == wrong.status_code == garbled.status_code == 401
    assert "API key" in missing.json()["detail"]


@pytest.mark.parametrize("scheme", ["Key", "Bearer", "Token"])
def test_each_accepted_scheme_works(locked: ServerProcess, scheme: str) -> None:
    response = httpx.post(f"{locked.url}/hidream/noop", json={}, headers={"Authorization": f"{scheme} bob-key"})

    assert response.status_code == 200


def test_a_job_is_invisible_to_other_keys(locked: ServerProcess) -> None:
    alice = {"Authorization": "Key alice-key"}
    bob = {"Authorization": "Key bob-key"}
    handle = httpx.post(f"{locked.url}/hidream/noop", json={}, headers=alice).json()

    assert httpx.get(handle["status_url"], headers=alice).status_code in (200, 202)
    assert httpx.get(handle["status_url"], headers=bob).status_code == 404
    assert httpx.get(handle["response_url"], headers=bob).status_code == 404
    assert httpx.put(handle["cancel_url"], headers=bob).status_code == 404
    assert httpx.get(handle["status_url"]).status_code == 401


def test_idempotency_keys_are_scoped_per_api_key(locked: ServerProcess) -> None:
    def submit(key: str) -> str:
        headers = {"Authorization": f"Key {key}", "Idempotency-Key": "same-key"}
        response = httpx.post(f"{locked.url}/hidream/noop", json={"prompt": "p"}, headers=headers)
        assert response.status_code == 200
        request_id: str = response.json()["request_id"]
        return request_id

    assert submit("alice-key") != submit("bob-key")


def test_fal_client_with_its_key_runs_a_job(locked: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{locked.url}/")
    client = fal_client.SyncClient(key="alice-key")
    try:
        result = client.subscribe("hidream/noop", arguments={"prompt": "with a key"})
    finally:
        close_fal_client(client)

    assert result["prompt"] == "with a key"


def test_health_needs_no_key(locked: ServerProcess) -> None:
    assert httpx.get(f"{locked.url}/health").status_code == 200


def test_outputs_are_capability_urls(locked: ServerProcess, tmp_path: Path) -> None:
    headers = {"Authorization": "Key alice-key"}
    handle = httpx.post(f"{locked.url}/hidream/noop", json={}, headers=headers).json()
    for _ in range(200):
        result = httpx.get(handle["response_url"], headers=headers)
        if result.status_code == 200:
            break
    url = result.json()["images"][0]["url"]

    assert httpx.get(url).status_code == 200  # no key needed for the unguessable file URL
