"""The `hidream` command as a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import BaseModel, Field

from hidream_service.client import ServiceClient
from hidream_service.commands.common import UsageError
from hidream_service.commands.run import image_arguments
from hidream_service.inference.weights import TINY_VERSION
from hidream_service.models.image_fields import image_fields
from tests.integration.harness import Reply, ServerProcess, WebhookReceiver, free_port, wait_until


def command_env(**extra: str) -> dict[str, str]:
    """This process's environment without any HIDREAM_ variable, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("HIDREAM_")}, **extra}


def hidream(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hidream_service", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env or command_env(),
    )


def test_run_in_process_builds_tiny_weights_on_first_use(tmp_path: Path) -> None:
    out = tmp_path / "fox.png"

    done = hidream(
        "run", "a red fox", "--out", str(out), "--weights", "tiny", "--data-dir", str(tmp_path / "d"),
        "--steps", "2", "--seed", "3", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (64, 64)
    assert "step 2/2" in done.stderr
    assert (tmp_path / "d" / "weights" / TINY_VERSION / "HiDream-I1-Full" / "model_index.json").is_file()


def test_run_against_a_running_server(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "noop.jpg"

    done = hidream("run", "x", "--out", str(out), "--server", server.url, "--endpoint", "hidream/noop", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.size == (1, 1)


def test_run_reports_a_rejected_request(server: ServerProcess, tmp_path: Path) -> None:
    done = hidream("run", "x", "--out", str(tmp_path / "x.png"), "--server", server.url, "--steps", "500", cwd=tmp_path)

    assert done.returncode == 1
    assert "422" in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_run_without_weights_or_server_explains_what_to_pass(tmp_path: Path) -> None:
    done = hidream("run", "x", "--out", str(tmp_path / "x.png"), "--data-dir", str(tmp_path), cwd=tmp_path)

    assert done.returncode == 2
    assert "--weights" in done.stderr


def test_second_server_on_the_same_data_dir_refuses_to_start(server: ServerProcess, tmp_path: Path) -> None:
    done = hidream("serve", "--data-dir", str(server.data_dir), "--port", "0", cwd=tmp_path)

    assert done.returncode != 0
    assert "another hidream server" in done.stderr


def test_serve_with_a_database_it_cannot_use_says_so_in_one_line(tmp_path: Path) -> None:
    unreachable = f"postgresql://hidream:s3cret@127.0.0.1:{free_port()}/hidream"
    refused = hidream("serve", "--database-url", unreachable, "--data-dir", str(tmp_path), cwd=tmp_path)
    unknown = hidream("serve", "--database-url", "mysql://db/hidream", "--data-dir", str(tmp_path), cwd=tmp_path)

    assert refused.returncode == 1 and "cannot reach the database" in refused.stderr
    assert "s3cret" not in refused.stderr and "Traceback" not in refused.stderr
    assert unknown.returncode == 2 and "postgresql://" in unknown.stderr and "Traceback" not in unknown.stderr


def test_serve_with_a_missing_weights_directory_says_so(tmp_path: Path) -> None:
    done = hidream("serve", "--weights", str(tmp_path / "nope"), "--data-dir", str(tmp_path), cwd=tmp_path)

    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_run_prints_the_result_as_json_for_scripts(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "noop.png"

    done = hidream(
        "run", "x", "--server", server.url, "--endpoint", "hidream/noop", "--seed", "9",
        "--set", "num_steps=3", "--json", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["result"]["seed"] == 9 and printed["files"] == [str(out)]
    assert httpx.get(f"{server.url}/v1/requests/{printed['request_id']}").json()["outcome"] == "succeeded"
    assert "step 3/3" in done.stderr
    with Image.open(out) as image:
        assert image.format == "PNG"


def test_ctrl_c_cancels_the_job(server: ServerProcess, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "hidream_service", "run", "slow", "--server", server.url, "--endpoint", "hidream/noop",
        "--set", "num_steps=300", "--set", "step_seconds=0.1", "--out", str(tmp_path / "never.png"),
    ]  # fmt: skip
    # Ctrl-C as a terminal sends it, whatever this test run inherited (a shell's background job
    # starts with SIGINT ignored, and a child keeps an ignored signal ignored).
    running = subprocess.Popen(
        command,
        env=command_env(),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    def started() -> str | None:
        latest = httpx.get(f"{server.url}/v1/requests", params={"limit": 1}).json()["requests"]
        busy = latest and latest[0]["outcome"] == "running" and latest[0]["endpoint"] == "hidream/noop"
        return str(latest[0]["request_id"]) if busy else None

    request_id = wait_until(started)
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=60)

    assert running.returncode == 130, stderr
    assert f"cancelled {request_id}" in stderr
    assert httpx.get(f"{server.url}/v1/requests/{request_id}").json()["status"] == "CANCELLED"
    assert not (tmp_path / "never.png").exists()


def test_run_says_which_endpoints_take_what(server: ServerProcess, tmp_path: Path) -> None:
    unknown = hidream("run", "x", "--server", server.url, "--endpoint", "nope/x", "--json", cwd=tmp_path)
    no_image = hidream(
        "run", "x", "--server", server.url, "--endpoint", "hidream/noop", "--image", str(tmp_path), "--json",
        cwd=tmp_path,
    )  # fmt: skip

    assert unknown.returncode == 2 and "it serves: " in unknown.stderr and "hidream/noop" in unknown.stderr
    assert no_image.returncode == 2 and "takes no image input" in no_image.stderr


def test_jobs_list_show_and_replay_a_failed_webhook(server: ServerProcess, tmp_path: Path) -> None:
    answer = {"status": 500}
    with WebhookReceiver(responder=lambda path, nth: Reply(answer["status"])) as receiver:
        request_id = httpx.post(
            f"{server.url}/hidream/noop", params={"fal_webhook": receiver.url()}, json={"prompt": "x"}
        ).json()["request_id"]

        def webhook_failed() -> bool:
            summary = httpx.get(f"{server.url}/v1/requests/{request_id}").json()
            return bool(summary["webhook"] and summary["webhook"]["state"] == "failed")

        wait_until(webhook_failed)
        listed = hidream("jobs", "--server", server.url, cwd=tmp_path)
        shown = hidream("jobs", "show", request_id, "--server", server.url, cwd=tmp_path)
        answer["status"] = 200
        replayed = hidream("jobs", "replay-webhook", request_id, "--server", server.url, cwd=tmp_path)

    row = next(line for line in listed.stdout.splitlines() if line.startswith(request_id))
    assert "hidream/noop" in row and "succeeded" in row and "failed (4 attempts)" in row
    assert shown.returncode == 0 and f"hidream jobs replay-webhook {request_id}" in shown.stdout
    assert "HTTP 500" in shown.stdout
    assert replayed.returncode == 0 and "delivered" in replayed.stdout and "HTTP 200" in replayed.stdout
    assert len(receiver.for_path("/hook")) == 5


def test_jobs_cancel_stops_a_running_request(server: ServerProcess, tmp_path: Path) -> None:
    slow = {"num_steps": 300, "step_seconds": 0.1}
    request_id = httpx.post(f"{server.url}/hidream/noop", json=slow).json()["request_id"]

    cancelled = hidream("jobs", "cancel", request_id, "--server", server.url, cwd=tmp_path)
    wait_until(lambda: httpx.get(f"{server.url}/v1/requests/{request_id}").json()["status"] == "CANCELLED")
    again = hidream("jobs", "cancel", request_id, "--server", server.url, cwd=tmp_path)
    unknown = hidream("jobs", "show", "no-such-request", "--server", server.url, cwd=tmp_path)

    assert cancelled.returncode == 0, cancelled.stderr
    assert again.returncode == 1 and "already ended" in again.stderr
    assert unknown.returncode == 1 and "no request no-such-request" in unknown.stderr


def test_jobs_use_the_key_from_the_environment(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "keyed", env={"HIDREAM_API_KEYS": "k1"}) as keyed:
        refused = hidream("jobs", "list", "--server", keyed.url, cwd=tmp_path)
        allowed = hidream("jobs", "list", cwd=tmp_path, env=command_env(HIDREAM_SERVER_URL=keyed.url, HIDREAM_KEY="k1"))

    assert refused.returncode == 1 and "missing API key" in refused.stderr
    assert allowed.returncode == 0 and "no requests yet" in allowed.stdout


@pytest.mark.parametrize("weights", ["tiny", None])
def test_doctor_passes_on_a_machine_that_can_serve(tmp_path: Path, weights: str | None) -> None:
    args = ["doctor", "--data-dir", str(tmp_path / "data")] + (["--weights", weights] if weights else [])

    done = hidream(*args, cwd=tmp_path)

    assert done.returncode == 0, done.stdout
    assert "ready to serve" in done.stdout
    gpu = next(line for line in done.stdout.splitlines() if "  gpu  " in line)
    assert "no GPU: CPU only" in gpu or gpu.startswith("ok")


def test_doctor_fails_with_what_to_do(tmp_path: Path) -> None:
    done = hidream("doctor", "--data-dir", str(tmp_path), "--weights", str(tmp_path / "nope"), "--json", cwd=tmp_path)

    assert done.returncode == 1
    weights = next(check for check in json.loads(done.stdout) if check["name"] == "weights")
    assert weights["level"] == "FAIL" and "does not exist" in weights["message"] and weights["fix"]


class EditingInput(BaseModel):
    """An editing-shaped input, to check the argument mapping without a model."""

    prompt: str
    image_url: str = Field(description="URL of the image to edit.")


def test_image_goes_into_the_endpoints_image_input_uploading_local_files(server: ServerProcess, tmp_path: Path) -> None:
    schema = EditingInput.model_json_schema()
    editing = {
        "id": "example/edit",
        "input_schema": schema,
        "image_fields": [f.to_json() for f in image_fields(schema)],
    }
    picture = tmp_path / "cat.png"
    Image.new("RGB", (4, 4), (0, 128, 255)).save(picture)

    with ServiceClient(server.url) as client:
        uploaded = image_arguments(client, editing, [str(picture)])
        linked = image_arguments(client, editing, ["https://example.com/cat.png"])
        with pytest.raises(UsageError, match="takes one image"):
            image_arguments(client, editing, [str(picture), str(picture)])
        with pytest.raises(UsageError, match="no such file"):
            image_arguments(client, editing, [str(tmp_path / "missing.png")])

    assert httpx.get(uploaded["image_url"]).content == picture.read_bytes()
    assert linked == {"image_url": "https://example.com/cat.png"}


def test_run_edits_a_local_image_with_e1(server: ServerProcess, tmp_path: Path) -> None:
    picture = tmp_path / "street.png"
    Image.new("RGB", (96, 64), (200, 120, 40)).save(picture)
    out = tmp_path / "edited.png"

    done = hidream(
        "run", "make it snow", "--server", server.url, "--endpoint", "fal-ai/hidream-e1-full",
        "--image", str(picture), "--steps", "2", "--seed", "1", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "step 2/2" in done.stderr
    with Image.open(out) as image:
        assert image.size == (78, 52)  # the source's 3:2 at the tiny 64x64 area


def test_workers_preload_models_before_the_first_job(tiny_weights: Path, tmp_path: Path) -> None:
    env = {"HIDREAM_PRELOAD": "fal-ai/hidream-i1-fast,fal-ai/hidream-e1-1", "HIDREAM_MAX_LOADED_PIPELINES": "2"}
    with ServerProcess(tmp_path / "data", weights=str(tiny_weights), env=env) as server:
        wait_until(lambda: "preloaded fal-ai/hidream-e1-1" in server.log(), timeout=120)

        log = server.log()
        assert "preloaded fal-ai/hidream-i1-fast" in log
        assert "loading fast from" in log and "loading e1-1 from" in log


def test_an_unknown_endpoint_to_preload_is_refused_at_start(tmp_path: Path) -> None:
    done = hidream("serve", "--data-dir", str(tmp_path), cwd=tmp_path, env=command_env(HIDREAM_PRELOAD="fal-ai/flux"))

    assert done.returncode == 2
    assert "unknown endpoint(s) to preload: fal-ai/flux" in done.stderr
