"""Webhook delivery and image fetching through faults and unfriendly callers: a slow receiver, a URL
no attempt can send, private destinations on a server with keys, and probes of local ports."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import Reply, ServerProcess, WebhookReceiver, free_port, wait_until
from webhooks.outbox import OutboxMessage, enqueue

E1_FULL = "fal-ai/hidream-e1-full"
SLOW_SECONDS = 4.0
# Two of the four delivery slots per host: few enough that a slow host could take them all without the
# per-host limit. E1 is served at the API with no weights: its image inputs are fetched at submit.
ENV = {
    "HIDREAM_WEBHOOK_MAX_CONCURRENCY": "4",
    "HIDREAM_WEBHOOK_MAX_PER_HOST": "2",
    "HIDREAM_WEBHOOK_TIMEOUT_SECONDS": "10",
    "HIDREAM_MODELS": "e1-full",
    "HIDREAM_IMAGE_FETCH_TIMEOUT_SECONDS": "1",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An open server on loopback (private destinations allowed, as for local development)."""
    with ServerProcess(tmp_path_factory.mktemp("faults"), env=ENV) as running:
        yield running


def submit(server: ServerProcess, webhook: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/hidream/noop", params={"fal_webhook": webhook}, json={}, headers=headers)


def request_id_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    request_id: str = response.json()["request_id"]
    return request_id


def history(server: ServerProcess, request_id: str) -> dict[str, Any]:
    """The request's one webhook delivery; {} while its job runs (the delivery is written as it ends)."""
    deliveries: list[dict[str, Any]] = httpx.get(f"{server.url}/v1/requests/{request_id}/webhooks").json()["deliveries"]
    assert len(deliveries) <= 1
    return deliveries[0] if deliveries else {}


class _SqliteTx:
    """The outbox's transaction interface over a plain sqlite3 connection (it takes `:name` too)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return self.connection.execute(sql, dict(params or {})).rowcount


def test_a_slow_host_takes_its_share_of_slots_and_other_hosts_keep_flowing(server: ServerProcess) -> None:
    slow_jobs = 8  # four times the slow host's share, twice every slot there is
    hold = 10.0  # the slow host's answers take longer than this test waits: nothing here waits for them
    with (
        WebhookReceiver(responder=lambda path, nth: Reply(200, delay=hold)) as slow,
        WebhookReceiver() as other,
    ):
        for _ in range(slow_jobs):
            request_id_of(submit(server, slow.url("/slow")))
        slow.wait_for("/slow", count=2)  # the slow host now holds what it may

        request_id_of(submit(server, other.url("/other")))
        (hook,) = other.wait_for("/other", timeout=hold - 2)

        # Ordering, not speed: without a per-host share the other host's webhook would have waited
        # behind every slow delivery queued before it.
        slow_started_before = [h for h in slow.for_path("/slow") if h.received_at < hook.received_at]
        assert len(slow_started_before) <= 2
        assert len(slow.for_path("/slow")) < slow_jobs


def test_a_replay_to_a_slow_receiver_answers_at_once_and_sends_in_the_background(server: ServerProcess) -> None:
    answer = {"reply": Reply(410)}  # gone: the delivery fails after one attempt
    with WebhookReceiver(responder=lambda path, nth: answer["reply"]) as receiver:
        request_id = request_id_of(submit(server, receiver.url("/replay")))
        wait_until(lambda: history(server, request_id).get("state") == "failed")
        answer["reply"] = Reply(200, delay=SLOW_SECONDS)

        started = httpx.post(f"{server.url}/v1/webhooks/deliveries/{history(server, request_id)['id']}/replay")

        assert started.status_code == 202, started.text
        assert started.json()["delivery"]["state"] == "failed"
        receiver.wait_for("/replay", count=2)  # the replay is on its way while the caller has its answer
        assert [a["replay"] for a in history(server, request_id)["attempts"]] == [False]  # not recorded yet
        delivered = wait_until(lambda: (d := history(server, request_id)).get("state") == "delivered" and d)
        assert delivered["attempts"][-1]["replay"] is True and delivered["attempts"][-1]["status_code"] == 200
        hooks = receiver.for_path("/replay")
        assert hooks[0].headers["webhook-id"] == hooks[1].headers["webhook-id"] == delivered["id"]


def test_an_attempt_that_cannot_be_sent_is_recorded_and_retried_on_schedule(server: ServerProcess) -> None:
    # A delivery stored before submit refused such URLs: httpx will not send a NUL (InvalidURL).
    request_id = request_id_of(httpx.post(f"{server.url}/hidream/noop", params={}, json={}))
    message = OutboxMessage(
        f"msg_{request_id}", "http://127.0.0.1:9/a\x00b", b"{}", signer="standard", subject=request_id
    )
    with sqlite3.connect(server.data_dir / "hidream.sqlite3", timeout=30) as connection:
        enqueue(_SqliteTx(connection), message, time.time())

    failed = wait_until(lambda: (d := history(server, request_id)).get("state") == "failed" and d)

    assert len(failed["attempts"]) == 4  # the test schedule's four attempts, then no more
    assert all(a["error"].startswith("InvalidURL") and a["status_code"] is None for a in failed["attempts"])
    assert "Traceback" not in server.log()
    replay = httpx.post(f"{server.url}/v1/webhooks/deliveries/{failed['id']}/replay")
    assert replay.status_code == 202, replay.text
    replayed = wait_until(lambda: len(a := history(server, request_id)["attempts"]) == 5 and a[-1])
    assert replayed["replay"] is True and replayed["error"].startswith("InvalidURL")
    assert "Traceback" not in server.log()


def test_no_answer_of_a_private_receiver_is_kept(server: ServerProcess) -> None:
    def leaky(path: str, nth: int) -> Reply:
        if nth == 0:
            return Reply(302, {"location": "http://10.1.2.3/secret-admin"}, body=b"")
        return Reply(500, body=b"internal secret: db password is hunter2")

    with WebhookReceiver(responder=leaky) as receiver:
        request_id = request_id_of(submit(server, receiver.url("/leak")))
        failed = wait_until(lambda: (d := history(server, request_id)).get("state") == "failed" and d)

    assert [a["status_code"] for a in failed["attempts"]] == [302, 500, 500, 500]
    assert all(a["response"] is None for a in failed["attempts"])
    shown = json.dumps(failed)
    assert "secret" not in shown and "10.1.2.3" not in shown


WAVESPEED_EDIT = ("/api/v3/wavespeed-ai/hidream-e1-full", {"image": "https://example.com/a.png", "prompt": "x"})


@pytest.mark.parametrize("control", ["\x00", "\t", "\x7f"])
@pytest.mark.parametrize(
    ("path", "payload", "query_field", "body_field"),
    [
        ("/hidream/noop", {}, "fal_webhook", None),
        ("/v1/models/hidream/noop/predictions", {"input": {}}, None, "webhook"),
        (*WAVESPEED_EDIT, "webhook", None),
        (*WAVESPEED_EDIT, None, "webhook_url"),
    ],
)
def test_a_webhook_url_with_a_control_character_is_refused_in_every_dialect(
    server: ServerProcess, control: str, path: str, payload: dict[str, Any], query_field: str, body_field: str
) -> None:
    url = f"http://127.0.0.1:9/a{control}b"
    body = {**payload, body_field: url} if body_field else payload

    response = httpx.post(f"{server.url}{path}", params={query_field: url} if query_field else None, json=body)

    # fal and Replicate answer a bad input with 422, WaveSpeed with 400; each in its own shape.
    assert response.status_code == (400 if path.startswith("/api/v3") else 422), response.text
    assert "control character" in response.text


def test_a_webhook_url_no_client_can_send_is_refused_at_submit(server: ServerProcess) -> None:
    surrogate = httpx.post(
        f"{server.url}/v1/models/hidream/noop/predictions",
        content=b'{"input": {}, "webhook": "http://127.0.0.1:9/a\\ud800b"}',
        headers={"content-type": "application/json"},
    )
    empty_label = submit(server, "http://a..b.example/hook")

    assert surrogate.status_code == 422, surrogate.text
    assert empty_label.status_code == 422 and "cannot resolve" in empty_label.text


def test_image_fetch_errors_read_the_same_for_open_and_closed_local_ports(server: ServerProcess) -> None:
    with WebhookReceiver() as host:
        host.files["/page.png"] = Reply(200, {"content-type": "text/html"}, body=b"<html>admin console</html>")
        host.files["/moved.png"] = Reply(302, {"location": "http://10.1.2.3/x"}, body=b"")
        host.files["/slow.png"] = Reply(200, delay=3.0, body=b"late")
        probes = {
            "closed port": f"http://127.0.0.1:{free_port()}/x.png",
            "open port, 404": host.url("/missing.png"),
            "open port, a page": host.url("/page.png"),
            "open port, a redirect": host.url("/moved.png"),
            "open port, too slow": host.url("/slow.png"),
        }
        answers = {
            name: httpx.post(f"{server.url}/{E1_FULL}", json={"image_url": url, "edit_instruction": "x"}, timeout=30)
            for name, url in probes.items()
        }

    shapes = {name: (answer.status_code, answer.json()["detail"]) for name, answer in answers.items()}
    assert len(set(map(json.dumps, shapes.values()))) == 1, shapes
    status, detail = shapes["closed port"]
    assert status == 422 and "could not download the image" in detail[0]["msg"]


def test_private_destinations_need_an_opt_in_once_keys_are_set(tmp_path: Path) -> None:
    keyed = {"HIDREAM_API_KEYS": "tenant-key", "HIDREAM_MODELS": "e1-full"}
    key = {"authorization": "Key tenant-key"}
    with WebhookReceiver() as receiver:
        with ServerProcess(tmp_path / "keys", env=keyed) as server:
            webhook = submit(server, receiver.url("/refused"), **key)
            image = httpx.post(
                f"{server.url}/{E1_FULL}",
                json={"image_url": receiver.url("/x.png"), "edit_instruction": "x"},
                headers=key,
            )
        with ServerProcess(tmp_path / "opted-in", env={**keyed, "HIDREAM_ALLOW_PRIVATE_URLS": "true"}) as server:
            allowed = request_id_of(submit(server, receiver.url("/allowed"), **key))
            receiver.wait_for("/allowed")

    assert webhook.status_code == 422 and "loopback" in webhook.json()["detail"][0]["msg"]
    assert image.status_code == 422 and "loopback" in image.json()["detail"][0]["msg"]
    assert receiver.for_path("/refused") == []
    assert receiver.for_path("/allowed")[0].json()["request_id"] == allowed
