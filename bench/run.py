"""The benchmarks, each figure beside its peer measured in the same run, as a ratio.

    .venv/bin/python bench/run.py [--quick] [--json FILE] [--only overhead,inference,batching,coldstart,gpu]

1. overhead   hidream/noop submit -> signed webhook received, against cog's production server
              (PyPI cog + coglet, a no-op predictor, async prediction with a webhook); then 32
              concurrent submitters: jobs/s, and p99 of GET status under that load. The service
              runs twice, on SQLite (the default) and on Postgres (a throwaway local server with
              its durable defaults, started from Debian's binaries; skipped where there are none).
2. inference  a tiny-weights HiDream-I1 job through the whole service against the same pipeline
              called directly in this process, same size and steps.
3. batching   8 tiny I1 jobs in flight, batching off against on: jobs/s and the ratio.
3b. previews  tiny I1 jobs with live previews off, at the default (every 4 steps) and at every step.
3c. loras     tiny I1 jobs without a LoRA, with a LoRA used for the first time (downloaded from a
              local HTTP server at submit, checked, cached, loaded and switched on) and with it again.
4. coldstart  process start -> /health 200 -> first image with tiny weights, and where the time goes.
5. gpu        bench/gpu.py, the full-size HiDream-I1 transformer in bf16 (random weights): s per image,
              MFU, peak memory, eager and with compiled blocks. Only where CUDA exists.

cog runs from its own virtual environment (bench/.cog-venv, made on first use) so that it cannot
disturb the service's dependencies. --quick runs a few jobs of each, only to prove the code works.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the throwaway Postgres of the tests
from common import Process, Receiver, free_port, summary, wait_ready

from tests.postgres import PostgresCluster, PostgresUnavailable

ROOT = Path(__file__).resolve().parents[1]
COG_VENV = ROOT / "bench" / ".cog-venv"
COG_VERSION = "0.23.1"
NOOP_PREDICTOR = """
from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        pass

    def predict(self, prompt: str = "") -> str:
        return prompt
"""
TERMINAL = {"succeeded", "failed", "canceled"}


# -- the two servers -------------------------------------------------------------------------------


class Hidream:
    name = "hidream"

    def __init__(
        self,
        data_dir: Path,
        weights: str | None = None,
        env: dict[str, str] | None = None,
        *,
        database_url: str | None = None,
    ) -> None:
        if database_url:
            self.name = "hidream-postgres"
            env = {**(env or {}), "HIDREAM_DATABASE_URL": database_url}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "hidream_service",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
        ]
        if weights:
            command += ["--weights", weights]
        self.started = time.perf_counter()
        self.process = Process(command, env=env)
        self.receiver = Receiver(lambda body: body.get("request_id"))

    def ready(self) -> float:
        return wait_ready(f"{self.url}/health", lambda r: r.status_code == 200)

    def job(self, client: httpx.Client, endpoint: str = "hidream/noop", body: dict[str, Any] | None = None) -> str:
        response = client.post(f"{self.url}/{endpoint}", params={"fal_webhook": self.receiver.url}, json=body or {})
        response.raise_for_status()
        request_id: str = response.json()["request_id"]
        return request_id

    def status(self, client: httpx.Client, request_id: str) -> None:
        client.get(f"{self.url}/hidream/noop/requests/{request_id}/status").raise_for_status()

    def close(self) -> None:
        self.receiver.close()
        self.process.__exit__()


class Coglet:
    name = "coglet"

    def __init__(self, workdir: Path) -> None:
        ensure_cog_venv()
        (workdir / "predict.py").write_text(NOOP_PREDICTOR)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            "PATH": f"{COG_VENV / 'bin'}:{__import__('os').environ['PATH']}",
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "PORT": str(self.port),
        }
        command = [str(COG_VENV / "bin" / "python"), "-m", "cog.server.http", "--host", "127.0.0.1"]
        self.process = Process(command, env=env, cwd=workdir)
        self.receiver = Receiver(lambda body: body.get("id") if body.get("status") in TERMINAL else None)

    def ready(self) -> float:
        return wait_ready(f"{self.url}/health-check", lambda r: r.status_code == 200 and r.json()["status"] == "READY")

    def job(self, client: httpx.Client) -> str:
        body = {"input": {"prompt": "x"}, "webhook": self.receiver.url, "webhook_events_filter": ["completed"]}
        while True:
            response = client.post(f"{self.url}/predictions", json=body, headers={"Prefer": "respond-async"})
            if response.status_code != 409:
                break
            # cog has one slot and no queue: it answers 409 while busy, and the caller tries again.
            time.sleep(0.001)
        response.raise_for_status()
        prediction_id: str = response.json()["id"]
        return prediction_id

    def close(self) -> None:
        self.receiver.close()
        self.process.__exit__()


def ensure_cog_venv() -> None:
    if (COG_VENV / "bin" / "python").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(COG_VENV)], check=True)
    subprocess.run(
        [
            str(COG_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            f"cog=={COG_VERSION}",
            f"coglet=={COG_VERSION}",
        ],
        check=True,
        stderr=subprocess.DEVNULL,
    )


# -- 1. overhead -----------------------------------------------------------------------------------


def sequential(servers: list[Any], jobs: int, warmup: int, blocks: int) -> dict[str, dict[str, Any]]:
    """One job at a time, each server in turn for `blocks` blocks of jobs/blocks: this machine's
    speed drifts by tens of percent over a minute, and alternating makes the drift fall on both."""
    latencies: dict[str, list[float]] = {server.name: [] for server in servers}
    with httpx.Client(timeout=30) as client:
        for server in servers:
            for _ in range(warmup):
                server.receiver.wait(server.job(client))
        for _ in range(blocks):
            for server in servers:
                for _ in range(jobs // blocks):
                    started = time.perf_counter()
                    arrived = server.receiver.wait(server.job(client))
                    latencies[server.name].append((arrived - started) * 1000)
    return {
        name: {"latency_ms": summary(values), "jobs_per_s": round(1000 / statistics.mean(values), 1)}
        for name, values in latencies.items()
    }


def concurrent(server: Any, jobs: int, submitters: int, poll_status: bool) -> dict[str, Any]:
    clients = [httpx.Client(timeout=60) for _ in range(submitters)]
    done_ids: list[str] = []
    status_latencies: list[float] = []
    stop = threading.Event()

    def one(index: int) -> None:
        key = server.job(clients[index % submitters])
        server.receiver.wait(key)
        done_ids.append(key)

    def poll() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                if done_ids:
                    started = time.perf_counter()
                    server.status(client, random.choice(done_ids))
                    status_latencies.append((time.perf_counter() - started) * 1000)
                else:
                    time.sleep(0.01)

    poller = threading.Thread(target=poll) if poll_status else None
    if poller:
        poller.start()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(submitters) as pool:
            list(pool.map(one, range(jobs)))
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        if poller:
            poller.join()
        for client in clients:
            client.close()
    figures: dict[str, Any] = {"jobs_per_s": round(jobs / elapsed, 1)}
    if status_latencies:
        figures["status_ms_under_load"] = summary(status_latencies)
    return figures


def overhead(quick: bool, workdir: Path) -> dict[str, Any]:
    jobs, warmup, blocks, load_jobs = (20, 5, 2, 64) if quick else (400, 30, 8, 400)
    with contextlib.ExitStack() as running:
        makers: list[Any] = [lambda: Hidream(workdir / "overhead-data"), lambda: Coglet(workdir)]
        try:
            cluster = running.enter_context(PostgresCluster(durable=True))
        except PostgresUnavailable as exc:
            print(f"overhead: Postgres figures skipped ({exc})", file=sys.stderr)
        else:
            url = cluster.create_database("bench")
            makers.append(lambda: Hidream(workdir / "overhead-pg", database_url=url))
        servers: list[Hidream | Coglet] = []
        for make in makers:
            servers.append(make())
            running.callback(servers[-1].close)
        for server in servers:
            server.ready()
        alone = sequential(servers, jobs, warmup, blocks)
        return {
            server.name: {
                "sequential": alone[server.name],
                "32_submitters": concurrent(server, load_jobs, 32, poll_status=server.name.startswith("hidream")),
            }
            for server in servers
        }


# -- 2. inference ----------------------------------------------------------------------------------

I1_ARGS = {"prompt": "a red fox in the snow", "num_inference_steps": 50, "guidance_scale": 5.0, "seed": 7}


class DirectPipeline:
    """bench/direct_pipeline.py kept running: the pipeline called directly, one command at a time."""

    def __init__(self, weights: Path, log: Path) -> None:
        self.log = log
        with log.open("w") as stderr:  # its warnings and, should it fail, its traceback
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / "direct_pipeline.py"), str(weights)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )

    def call(self, command: str) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            tail = self.log.read_text()[-2000:]
            raise RuntimeError(f"direct_pipeline.py exited with {self.process.wait()}:\n{tail}")
        ms: float = json.loads(answer)["ms"]
        return ms

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def inference(quick: bool, workdir: Path) -> dict[str, Any]:
    """One tiny I1 job at a time through the service, alternating with the same call made directly."""
    runs = 3 if quick else 10
    weights = workdir / "tiny"
    direct_ms: list[float] = []
    service_ms: list[float] = []
    with contextlib.ExitStack() as running:
        direct = DirectPipeline(weights, workdir / "direct-inference.log")
        running.callback(direct.close)
        server = Hidream(workdir / "inference-data", weights=str(weights))
        running.callback(server.close)
        server.ready()
        with httpx.Client(timeout=120) as client:
            for n in range(runs + 1):
                started = time.perf_counter()
                key = server.job(client, "fal-ai/hidream-i1-full", {**I1_ARGS, "image_size": "square"})
                arrived = server.receiver.wait(key, timeout=300)
                direct_call = direct.call("one")
                if n > 0:  # the first call of each loads the pipeline
                    service_ms.append((arrived - started) * 1000)
                    direct_ms.append(direct_call)
    return {
        "steps": I1_ARGS["num_inference_steps"],
        "direct_ms": summary(direct_ms),
        "service_ms": summary(service_ms),
        "ratio_p50": round(statistics.median(service_ms) / statistics.median(direct_ms), 3),
    }


# -- 3. dynamic batching --------------------------------------------------------------------------

BATCH_ARGS = {"num_inference_steps": 20, "image_size": "square"}


def batching(quick: bool, workdir: Path) -> dict[str, Any]:
    """Waves of 8 tiny I1 jobs submitted at once, to a server with batching off (1) and one with it
    on (up to 8), in turn; and the ceiling: the pipeline called directly, 8 prompts one at a time
    against 8 prompts in one call."""
    waves, in_flight = (1, 8) if quick else (4, 8)
    weights = workdir / "tiny"
    servers: dict[str, Hidream] = {}
    seconds = {"off": 0.0, "on": 0.0, "direct_one_at_a_time": 0.0, "direct_one_call": 0.0}
    with contextlib.ExitStack() as running:
        direct = DirectPipeline(weights, workdir / "direct-batching.log")
        running.callback(direct.close)
        for label, size in (("off", "1"), ("on", "8")):
            env = {"HIDREAM_BATCH_MAX_SIZE": size, "HIDREAM_BATCH_WAIT_SECONDS": "0.2"}
            servers[label] = Hidream(workdir / f"batching-{label}", weights=str(weights), env=env)
            running.callback(servers[label].close)
        client = running.enter_context(httpx.Client(timeout=120))
        for server in servers.values():
            server.ready()
            warm = server.job(client, "fal-ai/hidream-i1-full", {**BATCH_ARGS, "prompt": "warm up"})
            server.receiver.wait(warm, timeout=300)  # the first job loads the pipeline
        direct.call(f"batch {in_flight}")
        for wave in range(waves):
            for label, server in servers.items():
                seconds[label] += batch_wave(server, client, wave, in_flight)
            one_at_a_time = [direct.call(f"batch 1 {wave * 100 + n}") for n in range(in_flight)]
            seconds["direct_one_at_a_time"] += sum(one_at_a_time) / 1000
            seconds["direct_one_call"] += direct.call(f"batch {in_flight} {wave * 100}") / 1000
    jobs_per_s = {label: round(waves * in_flight / spent, 2) for label, spent in seconds.items()}
    return {
        "off": {"jobs_per_s": jobs_per_s["off"]},
        "on": {"jobs_per_s": jobs_per_s["on"]},
        "ratio": round(jobs_per_s["on"] / jobs_per_s["off"], 2),
        "direct": {
            "one_at_a_time_jobs_per_s": jobs_per_s["direct_one_at_a_time"],
            "one_call_jobs_per_s": jobs_per_s["direct_one_call"],
            "ratio": round(jobs_per_s["direct_one_call"] / jobs_per_s["direct_one_at_a_time"], 2),
        },
    }


def batch_wave(server: Hidream, client: httpx.Client, wave: int, in_flight: int) -> float:
    """Seconds for `in_flight` jobs submitted together to come back."""
    started = time.perf_counter()
    bodies = [{**BATCH_ARGS, "prompt": f"job {wave * 100 + i}", "seed": wave * 100 + i} for i in range(in_flight)]
    with ThreadPoolExecutor(in_flight) as pool:
        keys = list(pool.map(lambda body: server.job(client, "fal-ai/hidream-i1-full", body), bodies))
    for key in keys:
        server.receiver.wait(key, timeout=300)
    return time.perf_counter() - started


# -- 4b. live previews -----------------------------------------------------------------------------

PREVIEW_ARGS = {"prompt": "a lighthouse at dusk", "num_inference_steps": 32, "image_size": "square"}


def previews(quick: bool, workdir: Path) -> dict[str, Any]:
    """Tiny I1 jobs on a server that renders no previews, one at the default (every 4 steps) and one
    at every step (the worst case), in turn, one job at a time: what previews cost a job. The cost is
    the median of each round's ratio to that round's job without previews, so that the machine's
    drift over the run cancels out."""
    runs = 2 if quick else 30
    weights = workdir / "tiny"
    every = {"off": "0", "default": "4", "every_step": "1"}
    spent: dict[str, list[float]] = {label: [] for label in every}
    with contextlib.ExitStack() as running:
        servers = {}
        for label, steps in every.items():
            env = {"HIDREAM_PREVIEW_EVERY_STEPS": steps}
            servers[label] = Hidream(workdir / f"previews-{label}", weights=str(weights), env=env)
            running.callback(servers[label].close)
        client = running.enter_context(httpx.Client(timeout=120))
        for n in range(runs + 1):
            for label, server in servers.items():
                if n == 0:
                    server.ready()
                started = time.perf_counter()
                key = server.job(client, "fal-ai/hidream-i1-full", {**PREVIEW_ARGS, "seed": n})
                arrived = server.receiver.wait(key, timeout=300)
                if n > 0:  # the first job of each loads the pipeline
                    spent[label].append((arrived - started) * 1000)

    def cost(label: str) -> float:
        ratios = [on / off for on, off in zip(spent[label], spent["off"], strict=True)]
        return round(statistics.median(ratios) - 1, 4)

    return {
        "steps": PREVIEW_ARGS["num_inference_steps"],
        **{f"{label}_ms": summary(values) for label, values in spent.items()},
        "cost_default": cost("default"),
        "cost_every_step": cost("every_step"),
    }


# -- 3c. LoRAs ------------------------------------------------------------------------------------

LORA_ARGS = {"prompt": "a lighthouse at dusk", "num_inference_steps": 16, "image_size": "square"}


def loras(quick: bool, workdir: Path) -> dict[str, Any]:
    """Tiny I1 Fast jobs one at a time, in turn: without a LoRA; with a LoRA never seen before (its
    download, checks and storing at submit, then its load and switch in the worker); and with the
    same LoRA again (the cached file, the adapter already loaded: switched on and off only). Each
    round makes a new LoRA file, so that every first use is one."""
    from tests.lora_files import FileHost, layer_shapes, lora_file

    runs = 2 if quick else 15
    weights = workdir / "tiny"
    shapes = layer_shapes(weights / "HiDream-I1-Fast" / "transformer")
    spent: dict[str, list[float]] = {"base": [], "first_use": [], "cached": []}
    submit: dict[str, list[float]] = {label: [] for label in spent}
    size = 0
    with contextlib.ExitStack() as running:
        files = FileHost()  # a remote host's stand-in, on loopback
        running.callback(files.close)
        server = Hidream(workdir / "loras-data", weights=str(weights), env={"HIDREAM_MAX_LOADED_LORAS": "3"})
        running.callback(server.close)
        server.ready()
        client = running.enter_context(httpx.Client(timeout=120))
        for n in range(runs + 1):
            content = lora_file(shapes, seed=n)
            size = len(content)
            url = files.add(f"/lora-{n}.safetensors", content)
            with_lora = {"loras": [{"path": url}]}
            for label, extra in (("base", {}), ("first_use", with_lora), ("cached", with_lora)):
                started = time.perf_counter()
                key = server.job(client, "fal-ai/hidream-i1-fast", {**LORA_ARGS, "seed": n, **extra})
                submitted = time.perf_counter()
                arrived = server.receiver.wait(key, timeout=300)
                if n > 0:  # the first round loads the pipeline
                    spent[label].append((arrived - started) * 1000)
                    submit[label].append((submitted - started) * 1000)
    base = statistics.median(spent["base"])
    return {
        "steps": LORA_ARGS["num_inference_steps"],
        "lora_bytes": size,
        **{f"{label}_ms": summary(values) for label, values in spent.items()},
        **{f"{label}_submit_ms": summary(values) for label, values in submit.items()},
        "ratio_first_use": round(statistics.median(spent["first_use"]) / base, 3),
        "ratio_cached": round(statistics.median(spent["cached"]) / base, 3),
    }


# -- 5. GPU (only where CUDA exists) ----------------------------------------------------------------


def gpu(quick: bool, workdir: Path) -> dict[str, Any]:
    """bench/gpu.py: the full-size I1 transformer in bf16; skipped on a machine without CUDA."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True
    )
    if probe.stdout.strip() != "True":
        return {"skipped": "no CUDA device"}
    figures: dict[str, Any] = {}
    for label, extra in (("eager", []), ("compiled_blocks", ["--compile"])):
        out = workdir / f"gpu-{label}.json"
        command = [sys.executable, str(Path(__file__).parent / "gpu.py"), "--steps", "3" if quick else "10"]
        subprocess.run([*command, *extra, "--json", str(out)], check=True, capture_output=True)
        figures[label] = json.loads(out.read_text())
    return figures


# -- 4. cold start ---------------------------------------------------------------------------------


def coldstart(quick: bool, workdir: Path) -> dict[str, Any]:
    imports = subprocess.run(
        [sys.executable, "-c", "import time; t=time.perf_counter(); import torch, diffusers, transformers; "
         "from diffusers import HiDreamImagePipeline; print(time.perf_counter()-t)"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    server = Hidream(workdir / "cold-data", weights=str(workdir / "tiny"))
    try:
        health_s = server.ready()
        with httpx.Client(timeout=120) as client:
            started = time.perf_counter()
            first = server.job(client, "fal-ai/hidream-i1-fast", {"prompt": "x", "num_inference_steps": 2})
            server.receiver.wait(first, timeout=300)
            first_s = time.perf_counter() - started
            started = time.perf_counter()
            second = server.job(client, "fal-ai/hidream-i1-fast", {"prompt": "y", "num_inference_steps": 2})
            server.receiver.wait(second, timeout=300)
            warm_s = time.perf_counter() - started
    finally:
        server.close()
    return {
        "start_to_health_s": round(health_s, 3),
        "health_to_first_image_s": round(first_s, 3),
        "warm_image_s": round(warm_s, 3),
        "of_which_model_imports_s": round(float(imports.stdout.strip()), 3),
        "start_to_first_image_s": round(health_s + first_s, 3),
        "first_image_10s_after_health_preloaded_s": round(first_image_after_preload(workdir), 3),
    }


def first_image_after_preload(workdir: Path, settle_s: float = 10.0) -> float:
    """A first request that arrives a while after start, on a server that preloads its model."""
    env = {"HIDREAM_PRELOAD": "fal-ai/hidream-i1-fast"}
    server = Hidream(workdir / "preload-data", weights=str(workdir / "tiny"), env=env)
    try:
        server.ready()
        time.sleep(settle_s)  # the worker imports and loads meanwhile, off the request path
        with httpx.Client(timeout=120) as client:
            started = time.perf_counter()
            first = server.job(client, "fal-ai/hidream-i1-fast", {"prompt": "x", "num_inference_steps": 2})
            server.receiver.wait(first, timeout=300)
            return time.perf_counter() - started
    finally:
        server.close()


# -- report ----------------------------------------------------------------------------------------


def build_tiny(workdir: Path) -> None:
    code = (
        "import sys, pathlib\n"
        "from hidream_service.models.registry import DEFAULT_REGISTRY\n"
        "from hidream_service.inference.weights import WeightsLayout\n"
        "DEFAULT_REGISTRY.ensure_tiny_weights(WeightsLayout(pathlib.Path(sys.argv[1]), tiny=True))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(workdir / "tiny")], check=True, capture_output=True)


def print_table(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    if "overhead" in results:
        ours, cog = results["overhead"]["hidream"], results["overhead"]["coglet"]
        for label, path in (
            ("noop submit->webhook p50 (ms)", ("sequential", "latency_ms", "p50")),
            ("noop submit->webhook p99 (ms)", ("sequential", "latency_ms", "p99")),
            ("sequential jobs/s", ("sequential", "jobs_per_s")),
            ("jobs/s, 32 submitters", ("32_submitters", "jobs_per_s")),
        ):
            a, b = dig(ours, path), dig(cog, path)
            rows.append((label, f"{a}", f"{b} (coglet)", f"{a / b:.2f}"))
        status = ours["32_submitters"].get("status_ms_under_load")
        if status:
            rows.append(("GET status p99 under load (ms)", f"{status['p99']}", "-", "-"))
        postgres = results["overhead"].get("hidream-postgres")
        if postgres:
            for label, path in (
                ("on Postgres: noop p50 (ms)", ("sequential", "latency_ms", "p50")),
                ("on Postgres: noop p99 (ms)", ("sequential", "latency_ms", "p99")),
                ("on Postgres: jobs/s, 32 submitters", ("32_submitters", "jobs_per_s")),
                ("on Postgres: GET status p99 under load (ms)", ("32_submitters", "status_ms_under_load", "p99")),
            ):
                a, b = dig(postgres, path), dig(ours, path)
                rows.append((label, f"{a}", f"{b} (SQLite)", f"{a / b:.2f}"))
    if "inference" in results:
        inf = results["inference"]
        rows.append(
            (
                f"tiny I1 {inf['steps']} steps p50 (ms)",
                f"{inf['service_ms']['p50']}",
                f"{inf['direct_ms']['p50']} (direct)",
                f"{inf['ratio_p50']:.3f}",
            )
        )
    if "batching" in results:
        batched = results["batching"]
        rows.append(
            (
                "tiny I1 jobs/s, 8 in flight",
                f"{batched['on']['jobs_per_s']} (batching)",
                f"{batched['off']['jobs_per_s']} (no batching)",
                f"{batched['ratio']:.2f}",
            )
        )
        ceiling = batched["direct"]
        rows.append(
            (
                "  the ceiling: pipeline alone, 8 prompts",
                f"{ceiling['one_call_jobs_per_s']} (one call)",
                f"{ceiling['one_at_a_time_jobs_per_s']} (one at a time)",
                f"{ceiling['ratio']:.2f}",
            )
        )
    if "previews" in results:
        shown = results["previews"]
        for label in ("default", "every_step"):
            rows.append(
                (
                    f"tiny I1 {shown['steps']} steps, previews {label.replace('_', ' ')} p50 (ms)",
                    f"{shown[f'{label}_ms']['p50']}",
                    f"{shown['off_ms']['p50']} (no previews)",
                    f"{1 + shown[f'cost_{label}']:.3f}",
                )
            )
    if "loras" in results:
        lora = results["loras"]
        for label, words in (("first_use", "a new LoRA (download, load, switch)"), ("cached", "a cached LoRA")):
            rows.append(
                (
                    f"tiny I1 {lora['steps']} steps, {words} p50 (ms)",
                    f"{lora[f'{label}_ms']['p50']}",
                    f"{lora['base_ms']['p50']} (no LoRA)",
                    f"{lora[f'ratio_{label}']:.3f}",
                )
            )
        rows.append(
            (
                "  of which submit, new LoRA (ms)",
                f"{lora['first_use_submit_ms']['p50']}",
                f"{lora['base_submit_ms']['p50']} (no LoRA)",
                f"{lora['first_use_submit_ms']['p50'] / lora['base_submit_ms']['p50']:.2f}",
            )
        )
    if "gpu" in results:
        measured = results["gpu"]
        if "skipped" in measured:
            rows.append(("GPU: full I1 transformer", "skipped", measured["skipped"], "-"))
        else:
            for label, figures in measured.items():
                rows.append(
                    (
                        f"GPU {label}: s per 50-step image (MFU)",
                        f"{figures['seconds_per_50_step_image']} ({figures.get('mfu')})",
                        f"{figures['device']}, peak {figures.get('peak_memory_gib')} GiB",
                        "-",
                    )
                )
    if "coldstart" in results:
        cold = results["coldstart"]
        for key, value in cold.items():
            rows.append((f"cold start: {key}", f"{value}", "-", "-"))
    widths = [max(len(row[i]) for row in [("figure", "hidream", "peer", "ratio"), *rows]) for i in range(4)]
    for row in [("figure", "hidream", "peer", "ratio"), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def dig(data: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = data
    for key in path:
        value = value[key]
    return float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few jobs each, to prove the benchmarks run")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--only", default="overhead,inference,batching,previews,loras,coldstart,gpu")
    args = parser.parse_args()
    sections = args.only.split(",")
    results: dict[str, Any] = {"quick": args.quick}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if {"inference", "batching", "previews", "loras", "coldstart"} & set(sections):
            build_tiny(workdir)
        for name, section in (
            ("overhead", overhead),
            ("inference", inference),
            ("batching", batching),
            ("previews", previews),
            ("loras", loras),
            ("coldstart", coldstart),
            ("gpu", gpu),
        ):
            if name in sections:
                print(f"running {name} ...", file=sys.stderr)
                results[name] = section(args.quick, workdir)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
