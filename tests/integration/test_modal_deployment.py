"""The Modal deployment run offline: modal_app.py's own functions (`.local()`) over the shared SQL
store on a real Postgres, with in-process stand-ins only for what needs Modal's servers (Volume
commit/reload/read_file, spawn, FunctionCall). Webhooks go to a real receiver on loopback.

Each container is one `Containers.run(name, ...)`: its own deployment (its own database pool and
node name) and its own view of the outputs Volume, so files cross containers only as on Modal.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
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
from tests.lora_files import FileHost, layer_shapes, lora_file
from tests.modal_stand_ins import CALLS_ON_AN_EVENT_LOOP, VOLUMES_ARE_STAND_INS, StandInModal

pytestmark = VOLUMES_ARE_STAND_INS
T = TypeVar("T")


class Containers:
    """Runs modal_app's functions as if in named containers: each name keeps its own deployment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._state: dict[str, dict[str, Any]] = {}
        self._monkeypatch = monkeypatch

    def run(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        self._monkeypatch.setattr(modal_app, "_container", self._state.setdefault(name, {}))
        return fn(*args)

    def deployment(self, name: str) -> Any:
        return self._state[name]["deployment"]

    def close(self) -> None:
        for state in self._state.values():
            if "deployment" in state:
                state["deployment"].close()


@pytest.fixture
def modal_stand_in(tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> StandInModal:
    stand_in = StandInModal(tmp_path, postgres_url)
    monkeypatch.setattr(modal_app, "container_settings", stand_in.settings)
    monkeypatch.setattr(modal_app, "modal_handles", stand_in.handles)
    return stand_in


@pytest.fixture
def containers(modal_stand_in: StandInModal, monkeypatch: pytest.MonkeyPatch) -> Iterator[Containers]:
    opened = Containers(monkeypatch)
    yield opened
    opened.close()


@pytest.fixture
def client(containers: Containers) -> Iterator[TestClient]:
    with TestClient(containers.run("web", modal_app.web.local)) as running:
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
    client: TestClient, containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    job_id = submit(client, receiver, prompt="a fox", seed=7)
    assert status(client, job_id) == "IN_QUEUE"
    (call,) = modal_stand_in.spawner.of("noop")
    assert call.args == (job_id,)
    assert containers.deployment("web").calls.call_id(job_id) == call.object_id

    assert containers.run("cpu", modal_app.run_cpu_job.local, job_id) is True  # the spawned call

    assert status(client, job_id) == "COMPLETED"
    result = client.get(f"/hidream/noop/requests/{job_id}").json()
    image = client.get(result["images"][0]["url"].removeprefix("http://testserver"))
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    web_view = modal_stand_in.mounts[0]
    assert (web_view.files_read, web_view.reloads) == (1, 0)  # one file fetched, the view not reloaded
    assert [c.function for c in modal_stand_in.spawner.calls.values()] == ["noop", "send_webhooks"]

    assert containers.run("sender", modal_app.send_webhooks.local) == 1
    (hook,) = receiver.wait_for("/hook")
    secret = containers.deployment("web").keys.webhook_secret("")  # made by the first container, kept in Postgres
    assert containers.deployment("sender").keys.webhook_secret("") == secret
    assert Webhook(secret).verify(hook.body, hook.headers)["payload"] == result
    assert hook.headers["webhook-id"] == webhook_id(job_id)
    history = client.get(f"/v1/requests/{job_id}/webhooks").json()["deliveries"]
    assert [(d["id"], d["state"]) for d in history] == [(webhook_id(job_id), "delivered")]


def test_a_queued_cancel_cancels_the_function_call_and_nothing_runs(
    client: TestClient, containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    job_id = submit(client, receiver)

    assert client.put(f"/hidream/noop/requests/{job_id}/cancel").status_code == 202
    (call,) = modal_stand_in.spawner.of("noop")
    assert call.cancelled and not call.terminate_containers
    assert containers.run("cpu", modal_app.run_cpu_job.local, job_id) is False  # had Modal started it anyway
    containers.run("sender", modal_app.send_webhooks.local)
    (hook,) = receiver.wait_for("/hook")
    assert hook.json()["error"] == "Request was cancelled"


def test_a_running_cancel_reaches_the_step_loop(
    client: TestClient, containers: Containers, receiver: WebhookReceiver
) -> None:
    job_id = submit(client, receiver, num_steps=400, step_seconds=0.01)
    container = threading.Thread(target=containers.run, args=("cpu", modal_app.run_cpu_job.local, job_id))
    container.start()
    wait_until(lambda: "step 3/400" in str(client.get(f"/hidream/noop/requests/{job_id}/status?logs=1").json()))

    assert client.put(f"/hidream/noop/requests/{job_id}/cancel").json()["status"] == "CANCELLATION_REQUESTED"
    container.join(10)

    ended = client.get(f"/hidream/noop/requests/{job_id}/status?logs=1").json()
    assert not container.is_alive() and ended["error_type"] == "request_cancelled"  # fal's CANCELLED
    assert ended["logs"][-1]["message"] == "cancelled" and "step 400/400" not in str(ended["logs"])


def test_a_preempted_input_re_run_gives_the_same_images_and_webhook_id(
    containers: Containers,
    modal_stand_in: StandInModal,
    receiver: WebhookReceiver,
    tiny_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    modal_stand_in._settings["weights"] = str(tiny_weights)
    with TestClient(containers.run("web", modal_app.web.local)) as client:
        job_id = submit(client, receiver, app="fal-ai/hidream-i1-fast", prompt="a lighthouse", num_inference_steps=2)
        (call,) = modal_stand_in.spawner.of("hidream-i1")
        assert call.args == (job_id,)
        monkeypatch.setattr(modal_app, "call_holder", lambda: call.object_id)  # Modal re-runs under the same call

        def preempted(self: JobService, *args: Any, **kwargs: Any) -> bool:
            raise SystemExit("preempted after the images were written, before the job ended")

        with monkeypatch.context() as preemption:
            preemption.setattr(JobService, "complete", preempted)
            with pytest.raises(SystemExit):
                containers.run("gpu", modal_app.HiDreamModel(model="fast").run.local, job_id)
        image = modal_stand_in.outputs.committed / job_id / "0.jpg"
        first_bytes = image.read_bytes()
        assert status(client, job_id, "fal-ai/hidream-i1-fast") == "IN_PROGRESS"

        # the re-run, in a new container, takes the lease over
        assert containers.run("gpu-2", modal_app.HiDreamModel(model="fast").run.local, job_id) is True

        result = client.get(f"/fal-ai/hidream-i1-fast/requests/{job_id}").json()
        assert result["seed"] == seed_for(job_id) and image.read_bytes() == first_bytes
        containers.run("sender", modal_app.send_webhooks.local)
        (hook,) = receiver.wait_for("/hook")
        assert hook.headers["webhook-id"] == webhook_id(job_id) and hook.json()["payload"] == result
        assert len(client.get(f"/v1/requests/{job_id}/webhooks").json()["deliveries"]) == 1


def test_compatible_queued_jobs_run_as_one_batch_and_their_own_calls_are_cancelled(
    containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver, tiny_weights: Path
) -> None:
    modal_stand_in._settings.update(weights=str(tiny_weights), batch_max_size=4)
    with TestClient(containers.run("web", modal_app.web.local)) as client:
        jobs = [
            submit(client, receiver, app="fal-ai/hidream-i1-fast", prompt=f"a lighthouse {n}", num_inference_steps=2)
            for n in range(3)
        ]
        first, *mates = modal_stand_in.spawner.of("hidream-i1")

        assert containers.run("gpu", modal_app.HiDreamModel(model="fast").run.local, jobs[0]) is True

        assert [status(client, job_id, "fal-ai/hidream-i1-fast") for job_id in jobs] == ["COMPLETED"] * 3
        assert not first.cancelled
        assert all(call.cancelled and not call.terminate_containers for call in mates)  # no container starts


def test_a_lora_stored_by_web_after_the_gpu_container_started_is_fetched_by_it_and_applied(
    containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver, tiny_weights: Path
) -> None:
    modal_stand_in._settings["weights"] = str(tiny_weights)
    host = FileHost()
    lora = host.add(
        "/style.safetensors", lora_file(layer_shapes(tiny_weights / "HiDream-I1-Full" / "transformer"), seed=1)
    )
    app, body = "fal-ai/hidream-i1-fast", {"prompt": "a lighthouse", "seed": 3, "num_inference_steps": 2}
    gpu = modal_app.HiDreamModel(model="fast")
    try:
        with TestClient(containers.run("web", modal_app.web.local)) as client:
            plain = submit(client, receiver, app=app, **body)
            assert containers.run("gpu", gpu.run.local, plain) is True  # the GPU container is up now

            styled = submit(client, receiver, app=app, **body, loras=[{"path": lora, "scale": 1.0}])
            assert containers.run("gpu", gpu.run.local, styled) is True

            assert [status(client, job_id, app) for job_id in (plain, styled)] == ["COMPLETED"] * 2
            images = [
                client.get(client.get(f"/{app}/requests/{job_id}").json()["images"][0]["url"]).content
                for job_id in (plain, styled)
            ]
    finally:
        host.close()
    assert images[0] != images[1]  # the LoRA changed the image
    assert host.gets["/style.safetensors"] == 1
    views = modal_stand_in.lora_mounts  # the web container's first, then the GPU container's
    assert [view.files_read for view in views].count(1) == 1 and views[0].files_read == 0
    assert sum(view.files_read + view.reloads for view in views) == 1  # that one file, from the Volume's server
    assert len(list((modal_stand_in.loras.committed / "files").iterdir())) == 1  # web committed it


# -- the sweeper -------------------------------------------------------------------------------


def sweep(containers: Containers, *, undispatched_after: float = 60.0, cancel_grace: float = 30.0) -> Any:
    deployment = containers.run("sweeper", modal_app.deployment)
    return asyncio.run(deployment.sweep(undispatched_after=undispatched_after, cancel_grace=cancel_grace))


def noop_request(receiver: WebhookReceiver) -> JobRequest:
    return JobRequest(endpoint="hidream/noop", input={"prompt": "x"}, webhook_url=receiver.url(), base_url="http://t")


def api_service(containers: Containers) -> JobService:
    service: JobService = containers.run("api", modal_app.deployment).service()
    return service


def test_the_sweeper_spawns_a_job_whose_spawn_was_lost(
    containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    deployment = containers.run("api", modal_app.deployment)
    deployment.executor._dispatch = lambda endpoint, job_id: (_ for _ in ()).throw(ConnectionError("Modal unreachable"))
    job, _ = deployment.service().submit(noop_request(receiver))
    assert modal_stand_in.spawner.of("noop") == []

    assert sweep(containers, undispatched_after=0).dispatched == 1
    assert [call.args for call in modal_stand_in.spawner.of("noop")] == [(job.id,)]
    assert sweep(containers, undispatched_after=0).dispatched == 0  # its call is on record now


def test_the_sweeper_fails_a_job_whose_container_could_not_start(
    containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    job, _ = api_service(containers).submit(noop_request(receiver))
    (call,) = modal_stand_in.spawner.of("noop")
    call.outcome = ManifestMismatch("refusing to load /weights/HiDream-I1-Full: config.json is missing")

    report = sweep(containers)

    assert report.failed_unstarted == 1 and report.webhook_attempts == 1
    (hook,) = receiver.wait_for("/hook")
    assert hook.json()["status"] == "ERROR" and "config.json is missing" in hook.json()["error"]


def test_the_sweeper_re_spawns_a_job_whose_lease_ran_out(
    containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    modal_stand_in._settings["lease_seconds"] = 0.05
    service = api_service(containers)
    job, _ = service.submit(noop_request(receiver))
    assert service.lease(job.id, "local-worker") is not None  # then its worker vanished
    time.sleep(0.1)

    assert sweep(containers).leases_recovered == 1
    assert [call.args for call in modal_stand_in.spawner.of("noop")] == [(job.id,), (job.id,)]
    assert service.get(job.id, "").status is JobStatus.IN_QUEUE  # type: ignore[union-attr]


def test_a_running_job_whose_call_is_over_is_recovered_before_its_lease_runs_out(
    containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    service = api_service(containers)
    job, _ = service.submit(noop_request(receiver))
    (call,) = modal_stand_in.spawner.of("noop")
    assert service.lease(job.id, call.object_id) is not None
    assert sweep(containers).leases_recovered == 0  # Modal may still re-run the call: wait

    call.outcome = RuntimeError("the container was lost, and Modal's retries are spent")

    assert sweep(containers).leases_recovered == 1
    assert len(modal_stand_in.spawner.of("noop")) == 2
    assert service.get(job.id, "").status is JobStatus.IN_QUEUE  # type: ignore[union-attr]


def test_the_sweeper_interrupts_a_cancel_that_was_not_honoured_and_keeps_the_container(
    containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    service = api_service(containers)
    job, _ = service.submit(noop_request(receiver))
    (call,) = modal_stand_in.spawner.of("noop")
    assert service.lease(job.id, call.object_id) is not None
    service.cancel(job.id, "")
    assert not call.cancelled  # the flag comes first

    assert sweep(containers, cancel_grace=0).cancels_escalated == 1
    assert call.cancelled and not call.terminate_containers
    assert sweep(containers, cancel_grace=0).cancels_escalated == 0  # once


def test_the_sweeper_prunes_outputs_past_their_retention_from_the_volume(
    client: TestClient, containers: Containers, modal_stand_in: StandInModal, receiver: WebhookReceiver
) -> None:
    modal_stand_in._settings["output_ttl_hours"] = 0.5 / 3600  # half a second
    job_id = submit(client, receiver)
    containers.run("cpu", modal_app.run_cpu_job.local, job_id)
    assert (modal_stand_in.outputs.committed / job_id).is_dir()
    time.sleep(1.0)

    assert sweep(containers).files_expired == 1

    assert not (modal_stand_in.outputs.committed / job_id).exists()
    result = client.get(f"/hidream/noop/requests/{job_id}").json()
    gone = client.get(result["images"][0]["url"].removeprefix("http://testserver"))
    assert gone.status_code == 404 and "expired" in gone.text


def test_an_input_cancellation_mid_step_ends_the_job_cancelled(
    containers: Containers, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "HEARTBEAT_IDLE_SECONDS", 0.2)

    class InputCancellation(BaseException):
        """What Modal raises in the container when its FunctionCall is cancelled."""

    class Interrupted(Runners):
        def get(self, endpoint_id: str) -> Any:
            def run(inputs: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
                raise InputCancellation()

            return run

    deployment = containers.run("gpu", modal_app.deployment)
    job, _ = deployment.service().submit(noop_request(receiver))
    service, worker = deployment.job_worker("gpu", Interrupted(deployment.settings, deployment.registry))

    with pytest.raises(InputCancellation):
        run_spawned_job(service, worker, job.id, "fc-0001", cancellations=(InputCancellation,))

    ended = service.get(job.id, "", with_logs=True)
    assert ended is not None and ended.status is JobStatus.CANCELLED
    assert any("running on worker" in line.message for line in ended.logs)  # what it logged is kept
    assert worker.heartbeat.held() == []  # no lease of it is renewed any more
    wait_until(lambda: worker.heartbeat.running() is None)  # and the idle heartbeat thread ends


# -- the event loop ----------------------------------------------------------------------------

MODAL_ROUND_TRIP_SECONDS = 0.3
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS"
    b"\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x9a\xa0\xa0\x00\x00\x00\x00IEND\xaeB`\x82"
)
# Under the round trip: a Modal call on the loop is reported; a busy CPU's shorter stalls are not.
SLOW_CALLBACK_SECONDS = 0.25


def test_no_route_waits_on_modal_on_the_event_loop(
    containers: Containers, modal_stand_in: StandInModal, caplog: pytest.LogCaptureFixture
) -> None:
    """Every stand-in call (spawn, cancel, commit, read_file) takes a network round trip; asyncio's
    debug mode reports any callback that holds the loop longer than SLOW_CALLBACK_SECONDS."""
    modal_stand_in.latency = modal_stand_in.spawner.latency = MODAL_ROUND_TRIP_SECONDS
    app = containers.run("web", modal_app.web.local)
    CALLS_ON_AN_EVENT_LOOP.clear()

    async def exercise() -> None:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = SLOW_CALLBACK_SECONDS
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            # The first request's one-time work on the loop (lazy imports, schemas) is no wait on Modal,
            # and on a busy machine it can outlast the threshold; Modal calls in it are still counted.
            loop.slow_callback_duration = 60.0
            await client.post("/hidream/noop", json={"prompt": "warm up"})
            loop.slow_callback_duration = SLOW_CALLBACK_SECONDS
            submitted = await client.post("/hidream/noop", json={"prompt": "a fox"}, headers={"Idempotency-Key": "k1"})
            job_id = submitted.json()["request_id"]
            upload = await client.post("/files/upload", content=PNG, headers={"content-type": "image/png"})
            assert upload.status_code == 200, upload.text  # stored, and committed to the Volume
            await asyncio.to_thread(containers.run, "cpu", modal_app.run_cpu_job.local, job_id)
            assert (await client.get(f"/hidream/noop/requests/{job_id}/status?logs=1")).json()["status"] == "COMPLETED"
            result = (await client.get(f"/hidream/noop/requests/{job_id}")).json()
            image = await client.get(result["images"][0]["url"].removeprefix("http://testserver"))
            assert image.status_code == 200
            noop = {"version": "hidream/noop", "input": {"prompt": "x"}}
            prediction = await client.post("/v1/predictions", json=noop)
            assert prediction.status_code == 201, prediction.text
            cancel = await client.post(f"/v1/predictions/{prediction.json()['id']}/cancel")
            assert cancel.status_code == 200
            assert (await client.get("/v1/predictions")).status_code == 200

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio.run(exercise(), debug=True)

    assert modal_stand_in.mounts[0].files_read == 1 and len(modal_stand_in.spawner.calls) >= 2  # it did wait
    assert CALLS_ON_AN_EVENT_LOOP == []
    slow = [record.getMessage() for record in caplog.records if "took" in record.getMessage()]
    assert slow == []
