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
from typing import Any

import pytest

import modal_app
from hidream_service.config import Settings
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
    script += "print(modal_app.APP_NAME)"

    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=ROOT,
        env=without_modal_credentials(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert "hidream-service" in done.stdout


SERVICE_SECRETS = ["modal.Secret.from_name('hidream-service')", "modal.Secret.from_name('hidream-database')"]


def named_secrets(info: Any) -> list[str]:
    """The Secrets a function gets by name (the settings it is given with `env=` come as one more)."""
    return [secret for secret in info.secrets if secret.startswith("modal.Secret.from_name")]


def test_the_gpu_class_asks_for_80gb_gpus_in_order_with_volumes_secrets_and_timeouts() -> None:
    info = modal_app.HiDreamModel().run.info()

    assert info.gpus == [("H100", 1), ("A100-80GB", 1)]
    assert {name for name, _ in info.gpus} <= KNOWN_GPUS  # the client does not check GPU names
    assert {path: (v.name, v.read_only) for path, v in info.volumes.items()} == {
        "/weights": ("hidream-weights", True),
        "/outputs": ("hidream-outputs", False),
        "/loras": ("hidream-loras", True),  # stored by the web container; read here
    }
    assert named_secrets(info) == SERVICE_SECRETS
    assert info.timeout == modal_app.JOB_TIMEOUT_SECONDS and info.startup_timeout == modal_app.STARTUP_TIMEOUT_SECONDS
    assert info.max_retries == 2
    assert info.method_names == ["run"]


def test_gpu_containers_reserve_the_host_memory_a_load_needs_and_outlast_a_restart_with_their_lease() -> None:
    info = modal_app.HiDreamModel().run.info()

    assert info.memory_mib is not None and info.memory_mib >= 60 * 1024  # I1's load peaks near 60 GiB
    assert info.cpu is not None and info.cpu >= 4
    settings = Settings(**{name.removeprefix("HIDREAM_").lower(): value for name, value in gpu_settings().items()})
    assert settings.lease_seconds > modal_app.STARTUP_TIMEOUT_SECONDS  # a re-run's cold start fits in the lease
    assert settings.batch_max_size > 1 and settings.weights == "/weights"


def gpu_settings() -> dict[str, str]:
    return {name: value for name, value in modal_app.GPU_ENV.items() if name.startswith("HIDREAM_")}


def test_settings_are_given_as_env_so_changing_one_rebuilds_no_image_layer() -> None:
    layers = [str(layer) for layer in image_layers(modal_app.gpu_image)]

    assert not any("env" in layer.lower() for layer in layers), layers
    assert any("HIDREAM_LEASE_SECONDS" in secret for secret in modal_app.HiDreamModel().run.info().secrets)


def image_layers(image: Any) -> list[Any]:
    from modal._image import _Image
    from modal._utils.async_utils import synchronizer

    found: list[Any] = []

    def walk(node: Any) -> None:
        for dep in node._deps() if node._deps else []:
            walk(dep)
        if isinstance(node, _Image):
            found.append(node._rep)

    walk(synchronizer._translate_in(image))
    return found


def test_each_endpoint_is_spawned_into_the_pool_of_its_model_or_onto_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[tuple[str, str]] = []

    class Pool:
        def __init__(self, model: str) -> None:
            self.run = SimpleNamespace(spawn=lambda job_id: spawned.append((model, job_id)))

    monkeypatch.setattr(modal_app, "HiDreamModel", Pool)
    monkeypatch.setattr(modal_app, "_pools", {})
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


def test_the_web_endpoint_is_an_asgi_app_on_the_cpu_without_the_weights() -> None:
    info = modal_app.web.info()

    assert info.gpus == [] and info.web_info is not None
    assert info.concurrency_info is not None and info.concurrency_info.max_inputs == 100
    # Which endpoints exist is HIDREAM_MODELS, not what a mount holds; LoRAs are checked and stored here.
    assert {path: (v.name, v.read_only) for path, v in info.volumes.items()} == {
        "/outputs": ("hidream-outputs", False),
        "/loras": ("hidream-loras", False),
    }
    handles = modal_app.modal_handles()
    assert (handles.loras_dir, handles.loras) == (Path(modal_app.LORAS_DIR), modal_app.loras_volume)
    assert named_secrets(info) == SERVICE_SECRETS


def test_outputs_go_to_a_v2_volume_or_to_the_bucket_named_at_deploy() -> None:
    assert modal_app.outputs_volume is not None and modal_app.OUTPUTS_BUCKET is None
    script = (
        "import modal_app\n"
        "info = modal_app.web.info()\n"
        "print(sorted(info.volumes), sorted(info.cloud_bucket_mounts))\n"
        "print(modal_app.SERVICE_ENV['HIDREAM_MODELS'])"
    )
    env = {**without_modal_credentials(), "HIDREAM_OUTPUTS_BUCKET": "hidream-outputs", "HIDREAM_MODELS": "o1"}

    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['/loras'] ['/outputs']", "o1"]


def test_webhooks_go_out_from_cpu_functions_and_a_periodic_sweeper() -> None:
    for function in (modal_app.send_webhooks, modal_app.sweep, modal_app.run_cpu_job):
        assert function.info().gpus == []
        assert named_secrets(function.info()) == SERVICE_SECRETS
    assert modal_app.sweep.info().schedule == "Period(seconds=60.0)"
    assert modal_app.send_webhooks.info().volumes == {}  # a sender needs nothing but the database
    assert set(modal_app.sweep.info().volumes) == {"/outputs"}  # the sweeper prunes old outputs


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
def test_the_web_function_serves_the_same_create_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, postgres_url: str
) -> None:
    from fastapi import FastAPI

    stand_in = StandInModal(tmp_path, postgres_url)
    monkeypatch.setattr(modal_app, "container_settings", stand_in.settings)
    monkeypatch.setattr(modal_app, "modal_handles", stand_in.handles)
    monkeypatch.setattr(modal_app, "_container", {})

    web = modal_app.web.local()

    assert isinstance(web, FastAPI)
    assert {"/v1/predictions", "/v1/images/generations", "/hidream/noop"} <= set(web.openapi()["paths"])
    modal_app._container["deployment"].close()


def test_every_container_needs_the_shared_postgres(tmp_path: Path) -> None:
    from hidream_service.modal_backend.deployment import ModalDeployment, NeedsPostgres

    stand_in = StandInModal(tmp_path, f"sqlite:///{tmp_path}/jobs.db")

    with pytest.raises(NeedsPostgres, match="DATABASE_URL"):
        ModalDeployment(stand_in.settings(), stand_in.handles())
