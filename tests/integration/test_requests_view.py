"""The operator's view of the queue: recent requests across dialects with their webhook state, and
one request's details."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.harness import Reply, ServerProcess, WebhookReceiver, wait_until


@pytest.fixture(scope="module")
def noop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("requests")) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("keyed"), env={"HIDREAM_API_KEYS": "alice-key,bob-key"}) as running:
        yield running


def finished(server: ServerProcess, request_id: str, headers: dict[str, str] | None = None) -> dict[str, object]:
    def done() -> dict[str, object] | None:
        summary: dict[str, object] = httpx.get(f"{server.url}/v1/requests/{request_id}", headers=headers).json()
        return summary if summary["completed_at"] else None

    result: dict[str, object] = wait_until(done)
    return result


def test_requests_of_every_dialect_are_listed_newest_first(noop_server: ServerProcess) -> None:
    older = httpx.post(f"{noop_server.url}/hidream/noop", json={"prompt": "older"}).json()["request_id"]
    fal = httpx.post(f"{noop_server.url}/hidream/noop", json={"prompt": "fal"}).json()["request_id"]
    replicate = httpx.post(
        f"{noop_server.url}/v1/models/hidream/noop/predictions", json={"input": {"prompt": "replicate"}}
    ).json()["id"]
    finished(noop_server, replicate)

    listed = httpx.get(f"{noop_server.url}/v1/requests", params={"limit": 2}).json()

    assert [(item["request_id"], item["dialect"]) for item in listed["requests"]] == [
        (replicate, "replicate"),
        (fal, "fal"),
    ]
    assert listed["next"] == fal
    following = httpx.get(f"{noop_server.url}/v1/requests", params={"before": listed["next"]}).json()["requests"]
    assert following[0]["request_id"] == older


def test_a_summary_says_how_the_request_went(noop_server: ServerProcess) -> None:
    failed = httpx.post(f"{noop_server.url}/hidream/noop", json={"fail_with": "out of ideas"}).json()["request_id"]

    summary = finished(noop_server, failed)

    assert summary["outcome"] == "failed" and summary["error"] == "out of ideas"
    assert summary["status"] == "COMPLETED" and summary["images"] == 0
    assert isinstance(summary["total_seconds"], float)
    assert str(summary["cancel_url"]).endswith(f"/hidream/noop/requests/{failed}/cancel")
    assert summary["logs"]


def test_webhook_state_goes_from_retrying_to_failed_and_replay_delivers(noop_server: ServerProcess) -> None:
    answers = {"status": 500}
    with WebhookReceiver(responder=lambda path, nth: Reply(answers["status"])) as receiver:
        request_id = httpx.post(
            f"{noop_server.url}/hidream/noop", params={"fal_webhook": receiver.url()}, json={}
        ).json()["request_id"]

        def webhook() -> dict[str, object]:
            listed = httpx.get(f"{noop_server.url}/v1/requests").json()["requests"]
            summary: dict[str, object] = next(item for item in listed if item["request_id"] == request_id)
            state: dict[str, object] = summary["webhook"]  # type: ignore[assignment]
            return state

        wait_until(lambda: webhook()["state"] == "retrying")
        failed = wait_until(lambda: webhook()["state"] == "failed" and webhook())
        assert failed["attempts"] == 4 and failed["url"] == receiver.url()

        answers["status"] = 200
        replayed = httpx.post(f"{noop_server.url}/v1/webhooks/deliveries/{failed['delivery_id']}/replay")

        assert replayed.status_code == 202  # sent in the background
        wait_until(lambda: webhook()["state"] == "delivered")


def test_bad_list_arguments_are_4xx(noop_server: ServerProcess) -> None:
    for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"before": "no-such-request"}):
        answer = httpx.get(f"{noop_server.url}/v1/requests", params=params)
        assert answer.status_code == 422, params
        assert isinstance(answer.json()["detail"], list)
    assert httpx.get(f"{noop_server.url}/v1/requests/no-such-request").status_code == 404


def test_each_key_sees_only_its_own_requests(keyed_server: ServerProcess) -> None:
    alice = {"Authorization": "Key alice-key"}
    bob = {"Authorization": "Key bob-key"}
    mine = httpx.post(f"{keyed_server.url}/hidream/noop", json={}, headers=alice).json()["request_id"]

    assert httpx.get(f"{keyed_server.url}/v1/requests").status_code == 401
    assert [
        r["request_id"] for r in httpx.get(f"{keyed_server.url}/v1/requests", headers=alice).json()["requests"]
    ] == [mine]
    assert httpx.get(f"{keyed_server.url}/v1/requests", headers=bob).json()["requests"] == []
    assert httpx.get(f"{keyed_server.url}/v1/requests/{mine}", headers=bob).status_code == 404
    assert httpx.get(f"{keyed_server.url}/v1/requests", params={"before": mine}, headers=bob).status_code == 422


def test_the_catalogue_names_image_inputs(noop_server: ServerProcess) -> None:
    models = httpx.get(f"{noop_server.url}/models").json()["models"]

    assert all(model["image_fields"] == [] for model in models)  # no editing endpoint on this server yet


def events_of(server: ServerProcess, request_id: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    events = []
    with httpx.stream("GET", f"{server.url}/v1/requests/{request_id}/stream", headers=headers, timeout=30) as stream:
        assert stream.status_code == 200, stream.read()
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def test_a_request_s_stream_carries_typed_progress_and_each_log_line_once(noop_server: ServerProcess) -> None:
    body = {"num_steps": 5, "step_seconds": 0.3}  # longer than a heartbeat flush (0.25 s): one event a step or so
    request_id = httpx.post(f"{noop_server.url}/hidream/noop", json=body).json()["request_id"]

    events = events_of(noop_server, request_id)

    steps = [event["progress"]["step"] for event in events if event["progress"] is not None]
    assert len(set(steps)) >= 2 and steps == sorted(steps)  # it moved while the request ran
    assert events[-1]["progress"] == {"step": 5, "total": 5}
    lines = [line["message"] for event in events for line in event["logs"]]
    assert [line for line in lines if line.startswith("step ")] == [f"step {n}/5" for n in range(1, 6)]
    assert lines[-1] == "done"  # every line once, in order, across the events
    last = events[-1]
    assert last["outcome"] == "succeeded" and last["result"]["images"][0]["width"] == 1
    assert all(event["outcome"] in ("queued", "running") for event in events[:-1])


def test_a_request_s_stream_is_its_owner_s_only(keyed_server: ServerProcess) -> None:
    alice, bob = {"Authorization": "Key alice-key"}, {"Authorization": "Key bob-key"}
    request_id = httpx.post(f"{keyed_server.url}/hidream/noop", json={}, headers=alice).json()["request_id"]

    assert httpx.get(f"{keyed_server.url}/v1/requests/{request_id}/stream", headers=bob).status_code == 404
    assert events_of(keyed_server, request_id, alice)[-1]["outcome"] == "succeeded"
