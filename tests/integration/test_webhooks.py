"""Webhook delivery a caller can trust: both signature schemes, rotation, history, replay, SSRF."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from tests.integration.harness import TEST_SECRET, Reply, ServerProcess, WebhookReceiver, wait_until
from webhooks.signing import fal_verify, public_keys_from_jwks, verify


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server that generates its own keys (no pinned secret), so rotation works."""
    with ServerProcess(tmp_path / "data", env={"HIDREAM_WEBHOOK_SECRET": ""}) as server:
        yield server


def delivery_state(history_url: str) -> str | None:
    deliveries = httpx.get(history_url).json()["deliveries"]
    return str(deliveries[0]["state"]) if deliveries else None


def submit(server: ServerProcess, url: str, body: dict[str, object] | None = None) -> str:
    response = httpx.post(f"{server.url}/hidream/noop", params={"fal_webhook": url}, json=body or {})
    assert response.status_code == 200, response.text
    request_id: str = response.json()["request_id"]
    return request_id


def test_fal_webhooks_verify_with_fal_keys_and_with_standard_webhooks(
    keyed_server: ServerProcess, receiver: WebhookReceiver
) -> None:
    request_id = submit(keyed_server, receiver.url("/both"))
    (hook,) = receiver.wait_for("/both")

    document = httpx.get(f"{keyed_server.url}/.well-known/jwks.json").json()
    fal_verify(public_keys_from_jwks(document), hook.headers, hook.body)
    secret = httpx.get(f"{keyed_server.url}/v1/webhooks/default/secret").json()["key"]
    assert Webhook(secret).verify(hook.body, hook.headers)["request_id"] == request_id
    assert hook.headers["x-fal-webhook-request-id"] == request_id
    assert hook.headers["x-fal-webhook-user-id"] == "anonymous"


def test_rotation_keeps_the_old_secret_signing_during_the_grace_period(
    keyed_server: ServerProcess, receiver: WebhookReceiver
) -> None:
    old = httpx.get(f"{keyed_server.url}/v1/webhooks/default/secret").json()["key"]
    rotated = httpx.post(f"{keyed_server.url}/v1/webhooks/default/secret/rotate").json()
    submit(keyed_server, receiver.url("/rotated"))

    (hook,) = receiver.wait_for("/rotated")
    assert rotated["key"] != old
    assert httpx.get(f"{keyed_server.url}/v1/webhooks/default/secret").json()["key"] == rotated["key"]
    assert len(hook.headers["webhook-signature"].split()) == 2
    verify(old, hook.headers, hook.body)
    verify(rotated["key"], hook.headers, hook.body)


def test_a_pinned_secret_cannot_be_rotated_over_http(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/v1/webhooks/default/secret/rotate")

    assert response.status_code == 400
    assert "HIDREAM_WEBHOOK_SECRET" in response.json()["detail"]


def test_history_lists_every_attempt_and_replay_resends_the_same_event(tmp_path: Path) -> None:
    with WebhookReceiver(responses=[500, 500, 500, 500]) as receiver, ServerProcess(tmp_path / "d") as server:
        request_id = submit(server, receiver.url("/history"))
        receiver.wait_for("/history", count=4)
        history_url = f"{server.url}/v1/requests/{request_id}/webhooks"
        wait_until(lambda: delivery_state(history_url) == "failed")
        (delivery,) = httpx.get(history_url).json()["deliveries"]
        assert [attempt["status_code"] for attempt in delivery["attempts"]] == [500, 500, 500, 500]
        assert delivery["attempts"][0]["response"] is None  # a loopback receiver's answer is not kept
        assert delivery["attempts"][0]["latency_ms"] > 0

        started = httpx.post(f"{server.url}/v1/webhooks/deliveries/{delivery['id']}/replay")
        assert started.status_code == 202 and started.json()["id"] == delivery["id"]
        wait_until(lambda: delivery_state(history_url) == "delivered")
        (replayed,) = httpx.get(history_url).json()["deliveries"]

        assert replayed["attempts"][-1]["replay"] is True
        hooks = receiver.for_path("/history")
        assert len(hooks) == 5
        assert {hook.headers["webhook-id"] for hook in hooks} == {delivery["id"]}
        assert hooks[-1].body == hooks[0].body
        verify(TEST_SECRET, hooks[-1].headers, hooks[-1].body)  # signed afresh at replay time


def test_history_and_replay_of_unknown_things_are_404s(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/v1/requests/nope/webhooks").status_code == 404
    assert httpx.post(f"{server.url}/v1/webhooks/deliveries/msg_nope/replay").status_code == 404


def test_a_receiver_can_stop_retries(tmp_path: Path, receiver: WebhookReceiver) -> None:
    receiver.responder = lambda path, nth: Reply(500, {"webhook-delivery": "abort-message"})
    with ServerProcess(tmp_path / "d") as server:
        request_id = submit(server, receiver.url("/abort"))
        history_url = f"{server.url}/v1/requests/{request_id}/webhooks"
        wait_until(lambda: delivery_state(history_url) == "failed")

    assert len(receiver.for_path("/abort")) == 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://10.0.0.8/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("gopher://127.0.0.1/", "only http and https"),
    ],
)
def test_blocked_webhook_urls_are_refused_at_submit(tmp_path: Path, url: str, reason: str) -> None:
    with ServerProcess(tmp_path / "d", env={"HIDREAM_ALLOW_PRIVATE_URLS": "false"}) as server:
        response = httpx.post(f"{server.url}/hidream/noop", params={"fal_webhook": url}, json={})

    assert response.status_code == 422
    assert reason in response.json()["detail"][0]["msg"]


def test_metadata_stays_blocked_when_private_urls_are_allowed(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/hidream/noop", params={"fal_webhook": "http://169.254.169.254/"}, json={})

    assert response.status_code == 422
    assert "link-local" in response.text


def test_a_hanging_receiver_does_not_hold_up_health_new_jobs_or_cancel(tmp_path: Path) -> None:
    env = {"HIDREAM_WEBHOOK_TIMEOUT_SECONDS": "10", "HIDREAM_WEBHOOK_MAX_PER_HOST": "16"}  # one host, every slot
    with (
        WebhookReceiver(responder=lambda path, nth: Reply(200, delay=8)) as receiver,
        ServerProcess(tmp_path / "d", env=env) as server,
        httpx.Client(timeout=2) as client,
    ):
        for _ in range(20):
            submit(server, receiver.url("/hang"))
        receiver.wait_for("/hang", count=16)  # every delivery slot is now stuck on the receiver

        assert client.get(f"{server.url}/health").status_code == 200
        handle = client.post(f"{server.url}/hidream/noop", json={"num_steps": 100, "step_seconds": 0.05}).json()
        wait_until(lambda: client.get(handle["status_url"]).json()["status"] == "IN_PROGRESS")
        assert client.put(handle["cancel_url"]).status_code == 202
        wait_until(lambda: client.get(handle["status_url"]).json().get("error") == "Request was cancelled")
