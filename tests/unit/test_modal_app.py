"""modal_app.py offline: it imports without torch or a Modal token, and its functions carry the
GPUs, Volumes, Secrets and timeouts the docs promise. Nothing here reaches Modal's servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

import modal_app
from hidream_service.models.registry import DEFAULT_REGISTRY
from tests.modal_stand_ins import VOLUMES_ARE_STAND_INS, StandInModal

ROOT = Path(__file__).resolve().parents[2]
KNOWN_GPUS = {
    "T4",
    "L4",
    "A10",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "RTX-PRO-6000",
    "H100",
    "H100!",
    "H200",
    "B200",
}


def without_modal_credentials() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("MODAL_")}


def test_it_imports_on_a_machine_without_torch() -> None:
    blocked = "import sys\nfor name in ('torch', 'diffusers', 'transformers'):\n    sys.modules[name] = None\n"
    script = blocked + "import modal_app\nassert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    script += "print(sorted(modal_app.DICT_NAMES.values()))"

    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=ROOT,
        env=without_modal_credentials(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert "hidream-jobs" in done.stdout


def test_the_gpu_class_asks_for_80gb_gpus_in_order_with_volumes_secrets_and_timeouts() -> None:
    info = modal_app.HiDreamModel().run.info()

    assert info.gpus == [("H100", 1), ("A100-80GB", 1)]
    assert {name for name, _ in info.gpus} <= KNOWN_GPUS  # the client does not check GPU names
    assert {path: (v.name, v.read_only) for path, v in info.volumes.items()} == {
        "/weights": ("hidream-weights", True),
        "/outputs": ("hidream-outputs", False),
    }
    assert info.secrets == ["modal.Secret.from_name('hidream-service')"]
    assert info.timeout == modal_app.JOB_TIMEOUT_SECONDS and info.startup_timeout == modal_app.STARTUP_TIMEOUT_SECONDS
    assert info.max_retries == 2
    assert info.method_names == ["run"]


def test_each_endpoint_is_spawned_into_the_pool_of_its_model_or_onto_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[tuple[str, str]] = []

    class Pool:
        def __init__(self, model: str) -> None:
            self.run = SimpleNamespace(spawn=lambda job_id: spawned.append((model, job_id)))

    monkeypatch.setattr(modal_app, "HiDreamModel", Pool)
    monkeypatch.setattr(modal_app, "run_cpu_job", SimpleNamespace(spawn=lambda job_id: spawned.append(("cpu", job_id))))
    endpoints = DEFAULT_REGISTRY.endpoints

    for endpoint in endpoints.values():
        modal_app.dispatch(endpoint, f"job-{endpoint.id}")

    assert dict((job_id.removeprefix("job-"), pool) for pool, job_id in spawned) == {
        "hidream/noop": "cpu",
        "fal-ai/hidream-i1-full": "full",
        "fal-ai/hidream-i1-dev": "dev",
        "fal-ai/hidream-i1-fast": "fast",
        "fal-ai/hidream-i1-full/image-to-image": "full",
        "fal-ai/hidream-e1-full": "e1-full",
        "fal-ai/hidream-e1-1": "e1-1",
        "fal-ai/hidream-o1-image": "o1",
        "fal-ai/hidream-o1-image/edit": "o1",
        "fal-ai/hidream-o1-image/dev": "o1-dev",
        "fal-ai/hidream-o1-image/dev/edit": "o1-dev",
    }


def test_the_web_endpoint_is_an_asgi_app_on_the_cpu_with_both_volumes() -> None:
    info = modal_app.web.info()

    assert info.gpus == [] and info.web_info is not None
    assert info.concurrency_info is not None and info.concurrency_info.max_inputs == 100
    assert set(info.volumes) == {"/weights", "/outputs"} and info.volumes["/weights"].read_only
    assert info.secrets == ["modal.Secret.from_name('hidream-service')"]


def test_webhooks_go_out_from_cpu_functions_and_a_periodic_sweeper() -> None:
    for function in (modal_app.send_webhooks, modal_app.sweep, modal_app.run_cpu_job):
        assert function.info().gpus == []
    assert modal_app.sweep.info().schedule == "Period(seconds=60.0)"
    assert modal_app.send_webhooks.info().volumes == {}  # a sender needs nothing but the Dicts


def test_weights_are_downloaded_with_the_hugging_face_token_into_a_writable_volume() -> None:
    info = modal_app.download_weights.info()

    assert info.secrets == ["modal.Secret.from_name('huggingface-secret')"]
    assert info.volumes["/weights"].name == "hidream-weights" and not info.volumes["/weights"].read_only
    assert info.timeout == 3 * 60 * 60


def documented_constants() -> dict[str, str]:
    table = (ROOT / "docs" / "modal.md").read_text()
    return dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]+)` \|", table, flags=re.MULTILINE))


def test_the_named_constants_hold_the_documented_values() -> None:
    documented = documented_constants()

    assert len(documented) >= 10
    for name, value in documented.items():
        assert repr(getattr(modal_app, name)) == value, name
    assert 2 <= modal_app.GPU_SCALEDOWN_WINDOW_SECONDS <= 3600  # what Modal accepts
    assert modal_app.WEB_SCALEDOWN_WINDOW_SECONDS <= 3600


def test_the_image_pins_the_model_stack_of_the_inference_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned_here = {spec for spec in extras["inference"] if "==" in spec}

    assert pinned_here <= set(modal_app.INFERENCE_PACKAGES)
    assert all("==" in spec for spec in [*modal_app.SERVICE_PACKAGES, *modal_app.INFERENCE_PACKAGES])
    assert f"modal=={modal_version()}" in extras["modal"]


def modal_version() -> str:
    import modal

    return str(modal.__version__)


@VOLUMES_ARE_STAND_INS
def test_the_web_function_serves_the_same_create_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fastapi import FastAPI

    stand_in = StandInModal(tmp_path)
    monkeypatch.setattr(modal_app, "container_settings", stand_in.settings)
    monkeypatch.setattr(modal_app, "modal_handles", stand_in.handles)

    web = modal_app.web.local()

    assert isinstance(web, FastAPI)
    assert {"/v1/predictions", "/v1/images/generations", "/hidream/noop"} <= set(web.openapi()["paths"])
