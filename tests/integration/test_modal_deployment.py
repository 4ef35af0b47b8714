"""The Modal deployment run offline: modal_app.py's own functions (`.local()`) over the Modal-backed
store, executor, outputs and webhook delivery, with in-process stand-ins only for what needs Modal's
servers (Dict, Volume commit/reload, spawn, FunctionCall). Webhooks go to a real receiver on loopback.

Each `.local()` call is one container: it builds its own deployment and mounts its own view of the
outputs Volume, so files cross containers only through commit and reload, as on Modal.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

import modal_app
from hidream_service.inference.manifest import ManifestMismatch
from hidream_service.jobs import worker as worker_module
from hidream_service.jobs.model import JobRequest, JobStatus
from hidream_service.jobs.service import JobService
from hidream_service.jobs.worker import Runners
from hidream_service.modal_backend.executor import run_spawned_job
from hidream_service.models.base import RunContext
from hidream_service.models.running import seed_for
from tests.integration.harness import WebhookReceiver, wait_until
from tests.modal_stand_ins import TEST_SECRET, VOLUMES_ARE_STAND_INS, StandInModal

pytestmark = VOLUMES_ARE_STAND_INS


@pytest.fixture
def modal_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandInModal:
    stand_in = StandInModal(tmp_path)
    monkeypatch.setattr(modal_app, "container_settings", stand_in.settings)
    monkeypatch.setattr(modal_app, "modal_handles", stand_in.handles)
    return stand_in


@pytest.fixture
def client(modal_stand_in: StandInModal) -> Iterator[TestClient]:
    with TestClient(modal_app.web.local()) as running:
        yield running


def webhook_id(job_id: str) -> str:
    return f"msg_{job_id.replace('-', '')}"


def submit(client: TestClient, receiver: WebhookReceiver, app: str = "hidream/noop", **body: Any) -> str:
    answer = client.post(f"/{app}", params={"fal_webhook": receiver.url()}, json=body)
    assert answer.status_code == 200, answer.text
    job_id: str = answer.json()["request_id"]
    return job_id


def status(client: TestClient, job_id: str, app: str = "hidream/noop") -> str:
    answer: str = client.get(f"/{app}/requests/{job_id}/status").json()["status"]
    return answer


def test_submit_status_result_and_webhook_run_through_the_modal_web_app(
    client: TestClient, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    job_id = submit(client, receiver, prompt="a fox", seed=7)
    assert status(client, job_id) == "IN_QUEUE"
    (call,) = modal_stand_in.spawner.of("noop")
    assert call.args == (job_id,)
    runtime = modal_stand_in.dicts["runtime"]
    assert runtime.get(f"job:{job_id}") == call.object_id and runtime.get(f"call:{call.object_id}") == job_id

    assert modal_app.run_cpu_job.local(job_id) is True  # the spawned call, in a job container

    assert status(client, job_id) == "COMPLETED"
    result = client.get(f"/hidream/noop/requests/{job_id}").json()
    image = client.get(result["images"][0]["url"].removeprefix("http://testserver"))
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert modal_stand_in.mounts[0].reloads == 1  # the web container saw the job container's commit
    assert [c.function for c in modal_stand_in.spawner.calls.values()] == ["noop", "send_webhooks"]

    assert modal_app.send_webhooks.local() == 1
    (hook,) = receiver.wait_for("/hook")
    assert Webhook(TEST_SECRET).verify(hook.body, hook.headers)["payload"] == result
    assert hook.headers["webhook-id"] == webhook_id(job_id)
    history = client.get(f"/v1/requests/{job_id}/webhooks").json()["deliveries"]
    assert [(d["id"], d["state"]) for d in history] == [(webhook_id(job_id), "delivered")]


def test_a_queued_cancel_cancels_the_function_call_and_nothing_runs(
    client: TestClient, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    job_id = submit(client, receiver)

    assert client.put(f"/hidream/noop/requests/{job_id}/cancel").status_code == 202
    (call,) = modal_stand_in.spawner.of("noop")
    assert call.cancelled and not call.terminate_containers
    assert modal_app.run_cpu_job.local(job_id) is False  # had Modal started it anyway
    modal_app.send_webhooks.local()
    (hook,) = receiver.wait_for("/hook")
    assert hook.json()["error"] == "Request was cancelled"


def test_a_running_cancel_reaches_the_step_loop(
    client: TestClient, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    job_id = submit(client, receiver, num_steps=400, step_seconds=0.01)
    container = threading.Thread(target=modal_app.run_cpu_job.local, args=(job_id,))
    container.start()
    wait_until(lambda: "step 3/400" in str(client.get(f"/hidream/noop/requests/{job_id}/status?logs=1").json()))

    assert client.put(f"/hidream/noop/requests/{job_id}/cancel").json()["status"] == "CANCELLATION_REQUESTED"
    container.join(10)

    ended = client.get(f"/hidream/noop/requests/{job_id}/status?logs=1").json()
    assert not container.is_alive() and ended["error_type"] == "request_cancelled"  # fal's CANCELLED
    assert ended["logs"][-1]["message"] == "cancelled" and "step 400/400" not in str(ended["logs"])


def test_a_preempted_input_re_run_gives_the_same_images_and_webhook_id(
    modal_stand_in: StandInModal, receiver: WebhookReceiver, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modal_stand_in._settings["weights"] = str(tiny_weights)
    with TestClient(modal_app.web.local()) as client:
        job_id = submit(client, receiver, app="fal-ai/hidream-i1-fast", prompt="a lighthouse", num_inference_steps=2)
        (call,) = modal_stand_in.spawner.of("hidream-i1")
        assert call.args == (job_id,)
        monkeypatch.setattr(modal_app, "call_holder", lambda: call.object_id)  # Modal re-runs under the same call

        def preempted(self: JobService, *args: Any, **kwargs: Any) -> bool:
            raise SystemExit("preempted after the images were written, before the job ended")

        with monkeypatch.context() as preemption:
            preemption.setattr(JobService, "complete", preempted)
            with pytest.raises(SystemExit):
                modal_app.HiDreamModel(model="fast").run.local(job_id)
        image = modal_stand_in.outputs.committed / job_id / "0.jpg"
        first_bytes = image.read_bytes()
        assert status(client, job_id, "fal-ai/hidream-i1-fast") == "IN_PROGRESS"

        assert modal_app.HiDreamModel(model="fast").run.local(job_id) is True  # the re-run takes over

        result = client.get(f"/fal-ai/hidream-i1-fast/requests/{job_id}").json()
        assert result["seed"] == seed_for(job_id) and image.read_bytes() == first_bytes
        modal_app.send_webhooks.local()
        (hook,) = receiver.wait_for("/hook")
        assert hook.headers["webhook-id"] == webhook_id(job_id) and hook.json()["payload"] == result
        assert len(client.get(f"/v1/requests/{job_id}/webhooks").json()["deliveries"]) == 1


# -- the sweeper -------------------------------------------------------------------------------


def sweep(stand_in: StandInModal, *, undispatched_after: float = 60.0, cancel_grace: float = 30.0) -> Any:
    return asyncio.run(stand_in.deployment().sweep(undispatched_after=undispatched_after, cancel_grace=cancel_grace))


def noop_request(receiver: WebhookReceiver) -> JobRequest:
    return JobRequest(endpoint="hidream/noop", input={"prompt": "x"}, webhook_url=receiver.url(), base_url="http://t")


def test_the_sweeper_spawns_a_job_whose_spawn_was_lost(modal_stand_in: StandInModal, receiver: WebhookReceiver) -> None:
    deployment = modal_stand_in.deployment()
    deployment.executor._dispatch = lambda endpoint, job_id: (_ for _ in ()).throw(ConnectionError("Modal unreachable"))
    job, _ = deployment.service().submit(noop_request(receiver))
    assert modal_stand_in.spawner.of("noop") == []

    assert sweep(modal_stand_in, undispatched_after=0).dispatched == 1
    assert [call.args for call in modal_stand_in.spawner.of("noop")] == [(job.id,)]


def test_the_sweeper_fails_a_job_whose_container_could_not_start(
    modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    job, _ = modal_stand_in.deployment().service().submit(noop_request(receiver))
    (call,) = modal_stand_in.spawner.of("noop")
    call.outcome = ManifestMismatch("refusing to load /weights/HiDream-I1-Full: config.json is missing")

    report = sweep(modal_stand_in)

    assert report.failed_unstarted == 1 and report.webhook_attempts == 1
    (hook,) = receiver.wait_for("/hook")
    assert hook.json()["status"] == "ERROR" and "config.json is missing" in hook.json()["error"]


def test_the_sweeper_re_spawns_a_job_whose_container_was_lost(
    modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    modal_stand_in._settings["lease_seconds"] = 0.05
    service = modal_stand_in.deployment().service()
    job, _ = service.submit(noop_request(receiver))
    assert service.lease(job.id, "fc-0001") is not None  # then the container vanished
    time.sleep(0.1)

    assert sweep(modal_stand_in).leases_recovered == 1
    assert [call.args for call in modal_stand_in.spawner.of("noop")] == [(job.id,), (job.id,)]
    assert service.get(job.id, "").status is JobStatus.IN_QUEUE  # type: ignore[union-attr]


def test_the_sweeper_interrupts_a_cancel_that_was_not_honoured(
    modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    service = modal_stand_in.deployment().service()
    job, _ = service.submit(noop_request(receiver))
    (call,) = modal_stand_in.spawner.of("noop")
    assert service.lease(job.id, call.object_id) is not None
    service.cancel(job.id, "")
    assert not call.cancelled  # the flag comes first

    assert sweep(modal_stand_in, cancel_grace=0).cancels_escalated == 1
    assert call.cancelled and call.terminate_containers


def test_the_sweeper_writes_a_webhook_a_crash_left_unwritten(
    modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    deployment = modal_stand_in.deployment()
    service = deployment.service()
    job, _ = service.submit(noop_request(receiver))
    lease = service.lease(job.id, "fc-0001")
    assert lease is not None

    def crash(*args: Any) -> bool:
        raise SystemExit("the container died between the ending and its delivery")

    deployment.outbox.enqueue = crash
    with pytest.raises(SystemExit):
        service.complete(lease, {"images": []}, 0.1)

    report = sweep(modal_stand_in)
    assert report.endings_repaired == 1 and report.webhook_attempts == 1
    assert receiver.wait_for("/hook")[0].headers["webhook-id"] == webhook_id(job.id)


def test_an_input_cancellation_mid_step_ends_the_job_cancelled(
    modal_stand_in: StandInModal, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "HEARTBEAT_IDLE_SECONDS", 0.2)

    class InputCancellation(BaseException):
        """What Modal raises in the container when its FunctionCall is cancelled."""

    class Interrupted(Runners):
        def get(self, endpoint_id: str) -> Any:
            def run(inputs: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
                raise InputCancellation()

            return run

    deployment = modal_stand_in.deployment()
    job, _ = deployment.service().submit(noop_request(receiver))
    service, worker = deployment.job_worker("gpu", Interrupted(deployment.settings, deployment.registry))

    with pytest.raises(InputCancellation):
        run_spawned_job(service, worker, job.id, "fc-0001", cancellations=(InputCancellation,))

    ended = service.get(job.id, "", with_logs=True)
    assert ended is not None and ended.status is JobStatus.CANCELLED
    assert any("running on worker" in line.message for line in ended.logs)  # what it logged is kept
    assert worker.heartbeat.held() == []  # no lease of it is renewed any more
    wait_until(lambda: worker.heartbeat.running() is None)  # and the idle heartbeat thread ends
