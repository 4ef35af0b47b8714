"""The `hidream` command as a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from PIL import Image

from tests.integration.harness import ServerProcess, wait_until


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
    assert (tmp_path / "d" / "weights" / "tiny-v1" / "HiDream-I1-Full" / "model_index.json").is_file()


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
    running = subprocess.Popen(command, env=command_env(), stderr=subprocess.PIPE, text=True)

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
