"""What Modal ships, and only that, starts every container.

The file set of each function is built the way `modal deploy` builds it, offline: the mounts its
image definition adds (`add_local_python_source` and friends) and the app file Modal mounts itself,
each listed by modal's own file selection (`modal.mount._select_files`, what the upload walks).
Those files alone are copied into an empty directory, and a fresh interpreter started there runs
every kind of container: the web app answering requests (the playground among them), the CPU job
runner, the webhook sender, the sweeper, and a GPU class loading tiny weights and running a job.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import modal_app

ROOT = Path(__file__).resolve().parents[2]
CONTAINER_ROOT = "/root"  # where Modal puts the app file and add_local_python_source's packages


def shipped_files(function: Any) -> dict[str, Path]:
    """Remote path (under /root) -> local file, for everything Modal uploads for `function`."""
    from modal._image import _Image
    from modal._utils.async_utils import synchronizer
    from modal.mount import _Mount, _select_files

    inner = synchronizer._translate_in(function)
    spec = (inner._class_service_function if hasattr(inner, "_class_service_function") else inner)._spec
    mounts: list[Any] = list(spec.mounts)

    def walk(node: Any) -> None:
        for dep in node._deps() if node._deps else []:
            walk(dep)
        if isinstance(node, _Mount):
            mounts.append(node)

    assert isinstance(spec.image, _Image)
    walk(spec.image)
    files: dict[str, Path] = {}
    for mount in mounts:
        if mount._entries:  # the client mount (Modal's own package) has none to list here
            files.update({str(remote): Path(local) for local, remote in _select_files(mount._entries)})
    return files


FUNCTIONS = {
    "web": modal_app.web,
    "run_cpu_job": modal_app.run_cpu_job,
    "send_webhooks": modal_app.send_webhooks,
    "sweep": modal_app.sweep,
    "HiDreamModel": modal_app.HiDreamModel,
    "download_weights": modal_app.download_weights,
    "verify_weights": modal_app.verify_weights,
}


def tracked_source() -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "modal_app.py", "hidream_service", "webhooks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {f"{CONTAINER_ROOT}/{path}" for path in listed}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_ships_the_whole_service_source_with_its_non_python_files(name: str) -> None:
    shipped = set(shipped_files(FUNCTIONS[name]))

    assert tracked_source() <= shipped, sorted(tracked_source() - shipped)
    assert any(path.endswith("/playground/app.js") for path in shipped)
    assert not [path for path in shipped if "__pycache__" in path or path.endswith(".pyc")]


STARTS_EVERY_CONTAINER = """
import os, sys
from pathlib import Path

shipped_root, repo, tmp, database_url, tiny_weights = sys.argv[1:]
sys.path.append(repo)  # for the tests' Modal stand-ins only; everything else comes from here
import hidream_service, modal_app, webhooks
for module in (hidream_service, modal_app, webhooks):
    assert Path(module.__file__).is_relative_to(shipped_root), module.__file__

from fastapi.testclient import TestClient
from tests.modal_stand_ins import StandInModal

stand_in = StandInModal(Path(tmp), database_url, weights=tiny_weights)
modal_app.container_settings = stand_in.settings
modal_app.modal_handles = stand_in.handles

with TestClient(modal_app.web.local()) as client:
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower(), page.status_code
    assert client.get("/playground/app.js").status_code == 200
    noop = client.post("/hidream/noop", json={"prompt": "a fox"}).json()["request_id"]
    fast = client.post("/fal-ai/hidream-i1-fast", json={"prompt": "a fox", "num_inference_steps": 2})
    fast = fast.json()["request_id"]

    assert modal_app.run_cpu_job.local(noop) is True
    assert modal_app.HiDreamModel(model="fast").run.local(fast) is True
    for app, job in (("hidream/noop", noop), ("fal-ai/hidream-i1-fast", fast)):
        assert client.get(f"/{app}/requests/{job}/status").json()["status"] == "COMPLETED", job
    assert modal_app.send_webhooks.local() == 0  # no webhook was asked for
    assert modal_app.sweep.local()["dispatched"] == 0
print("every container started")
"""


@pytest.mark.filterwarnings("ignore")
def test_the_shipped_files_alone_start_every_container(tmp_path: Path, postgres_url: str, tiny_weights: Path) -> None:
    shipped = shipped_files(modal_app.web)
    assert shipped_files(modal_app.HiDreamModel) == shipped  # so one copy stands for both images
    container = tmp_path / "container-root"
    for remote, local in shipped.items():
        target = container / Path(remote).relative_to(CONTAINER_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)

    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(STARTS_EVERY_CONTAINER)]
        + [str(container), str(ROOT), str(tmp_path), postgres_url, str(tiny_weights)],
        cwd=container,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr[-4000:]
    assert "every container started" in done.stdout
