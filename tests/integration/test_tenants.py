"""Tenants: each API key has its own webhook secret, and only admin keys run server-wide operations."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from hidream_service.config import Settings
from tests.integration.harness import TEST_SECRET, ReceivedWebhook, ServerProcess, WebhookReceiver
from webhooks.signing import WebhookVerificationError, fal_verify, public_keys_from_jwks, sign_headers, verify

KEYS = {"alice": "alice-key", "bob": "bob-key", "root": "root-key"}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Key {KEYS[name]}"}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "HIDREAM_API_KEYS": ",".join(KEYS.values()),
        "HIDREAM_ADMIN_KEYS": KEYS["root"],
        "HIDREAM_WEBHOOK_SECRET": "",  # generated secrets, which the keys rotate
        "HIDREAM_ALLOW_PRIVATE_URLS": "true",  # the receiver listens on loopback
    }
    with ServerProcess(tmp_path_factory.mktemp("tenants"), env=env) as server:
        yield server


def secret_of(server: ServerProcess, name: str) -> str:
    response = httpx.get(f"{server.url}/v1/webhooks/default/secret", headers=auth(name))
    assert response.status_code == 200, response.text
    secret: str = response.json()["key"]
    return secret


def fal_webhook(server: ServerProcess, receiver: WebhookReceiver, name: str, path: str) -> ReceivedWebhook:
    response = httpx.post(
        f"{server.url}/hidream/noop", params={"fal_webhook": receiver.url(path)}, json={}, headers=auth(name)
    )
    assert response.status_code == 200, response.text
    (hook,) = receiver.wait_for(path)
    return hook


def verifies(secret: str, hook: ReceivedWebhook, headers: dict[str, str] | None = None) -> bool:
    try:
        verify(secret, headers or hook.headers, hook.body)
    except WebhookVerificationError:
        return False
    return True


def test_each_key_is_shown_its_own_secret_in_every_dialect(tenants: ServerProcess) -> None:
    alice, bob = secret_of(tenants, "alice"), secret_of(tenants, "bob")
    wavespeed = httpx.get(f"{tenants.url}/api/v3/webhook/secret", headers=auth("alice"))

    assert alice.startswith("whsec_") and alice != bob
    assert wavespeed.json()["data"]["secret"] == alice
    # Without a key, nothing, in each dialect's own shape.
    replicate_refusal = httpx.get(f"{tenants.url}/v1/webhooks/default/secret")
    wavespeed_refusal = httpx.get(f"{tenants.url}/api/v3/webhook/secret")
    assert replicate_refusal.status_code == wavespeed_refusal.status_code == 401
    assert replicate_refusal.json()["status"] == 401 and "API key" in replicate_refusal.json()["detail"]
    assert wavespeed_refusal.json()["code"] == 401 and wavespeed_refusal.json()["data"] is None


def test_a_keys_webhooks_verify_with_its_own_secret_and_no_other(
    tenants: ServerProcess, receiver: WebhookReceiver
) -> None:
    alice, bob = secret_of(tenants, "alice"), secret_of(tenants, "bob")
    fal_hook = fal_webhook(tenants, receiver, "alice", "/alice")
    created = httpx.post(
        f"{tenants.url}/v1/models/hidream/noop/predictions",
        json={"input": {}, "webhook": receiver.url("/bob"), "webhook_events_filter": ["completed"]},
        headers={"Authorization": f"Token {KEYS['bob']}"},
    )
    assert created.status_code == 201, created.text
    (replicate_hook,) = receiver.wait_for("/bob")

    assert verifies(alice, fal_hook) and not verifies(bob, fal_hook)
    assert verifies(bob, replicate_hook) and not verifies(alice, replicate_hook)
    # Bob signs a body of his own choosing for Alice's receiver: it does not verify there.
    forged_body = fal_hook.body.replace(b'"OK"', b'"ERROR"')
    forged = sign_headers([bob], fal_hook.headers["webhook-id"], int(time.time()), forged_body)
    with pytest.raises(WebhookVerificationError):
        verify(alice, forged, forged_body)


def test_rotating_a_keys_secret_leaves_other_keys_webhooks_and_every_upload_token_valid(
    tenants: ServerProcess, receiver: WebhookReceiver
) -> None:
    alice = secret_of(tenants, "alice")
    token = httpx.post(f"{tenants.url}/storage/auth/token", headers=auth("alice")).json()["token"]
    upload = httpx.post(
        f"{tenants.url}/storage/upload/initiate", json={"file_name": "a.png"}, headers=auth("alice")
    ).json()
    old_bob = secret_of(tenants, "bob")
    rotate = f"{tenants.url}/v1/webhooks/default/secret/rotate"

    rotated = httpx.post(rotate, headers=auth("bob")).json()

    assert rotated["key"] not in (old_bob, alice) and secret_of(tenants, "bob") == rotated["key"]
    assert secret_of(tenants, "alice") == alice
    hook = fal_webhook(tenants, receiver, "alice", "/after-rotation")
    assert len(hook.headers["webhook-signature"].split()) == 1  # Bob's rotation gave Alice nothing to sign with
    assert verifies(alice, hook)
    # Tokens and upload URLs carry a server key's proof, no webhook secret's: even Alice's own
    # rotation voids none of them.
    assert httpx.post(rotate, headers=auth("alice")).status_code == 200
    assert httpx.put(upload["upload_url"], content=b"\x89PNG fake").status_code == 200
    uploaded = httpx.post(
        f"{tenants.url}/files/upload",
        content=b"y",
        headers={"authorization": f"Bearer {token}", "x-fal-file-name": "t.bin"},
    )
    assert uploaded.status_code == 200, uploaded.text


def test_server_wide_operations_need_an_admin_key(tenants: ServerProcess, receiver: WebhookReceiver) -> None:
    rotate_fal_key = f"{tenants.url}/v1/admin/fal-key/rotate"
    published = httpx.get(f"{tenants.url}/.well-known/jwks.json").json()

    anonymous = httpx.post(rotate_fal_key)
    refused = httpx.post(rotate_fal_key, headers=auth("alice"))
    assert anonymous.status_code == 401
    assert refused.status_code == 403 and "HIDREAM_ADMIN_KEYS" in refused.json()["detail"]
    assert httpx.get(f"{tenants.url}/.well-known/jwks.json").json() == published

    done = httpx.post(rotate_fal_key, headers=auth("root"))
    assert done.status_code == 200, done.text
    now_published = httpx.get(f"{tenants.url}/.well-known/jwks.json").json()["keys"]
    assert done.json()["kid"] in {key["kid"] for key in now_published} and len(now_published) == 2
    # The new key signs only after the grace period: a receiver's cached JWKS still verifies.
    hook = fal_webhook(tenants, receiver, "alice", "/after-fal-rotation")
    fal_verify(public_keys_from_jwks(published), hook.headers, hook.body)


def test_fal_webhooks_name_an_opaque_user_id_per_key(tenants: ServerProcess, receiver: WebhookReceiver) -> None:
    first = fal_webhook(tenants, receiver, "alice", "/id-1").headers["x-fal-webhook-user-id"]
    second = fal_webhook(tenants, receiver, "alice", "/id-2").headers["x-fal-webhook-user-id"]
    bobs = fal_webhook(tenants, receiver, "bob", "/id-3").headers["x-fal-webhook-user-id"]

    assert first == second != bobs
    for key in KEYS.values():
        assert not hashlib.sha256(key.encode()).hexdigest().startswith(first)


def test_a_pinned_secret_gives_each_key_one_of_its_own(tmp_path: Path) -> None:
    # The harness pins TEST_SECRET.
    with ServerProcess(tmp_path, env={"HIDREAM_API_KEYS": "alice-key,bob-key"}) as server:
        alice, bob = secret_of(server, "alice"), secret_of(server, "bob")
        rotation = httpx.post(f"{server.url}/v1/webhooks/default/secret/rotate", headers=auth("alice"))

    assert len({alice, bob, TEST_SECRET}) == 3
    assert rotation.status_code == 400 and "HIDREAM_WEBHOOK_SECRET" in rotation.json()["detail"]


def test_an_admin_key_must_be_an_api_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="admin key"):
        Settings(data_dir=tmp_path, api_keys=["alice-key"], admin_keys=["root-key"])
