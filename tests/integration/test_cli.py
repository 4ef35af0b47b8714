"""The `hidream` command as a user types it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.integration.harness import ServerProcess


def hidream(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hidream_service", *args], cwd=cwd, capture_output=True, text=True, timeout=300
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
    assert (tmp_path / "d" / "weights" / "tiny-v3" / "HiDream-I1-Full" / "model_index.json").is_file()


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
