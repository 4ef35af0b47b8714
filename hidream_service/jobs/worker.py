"""A worker process: lease a job, run it, end it; a heartbeat thread beside the runs.

The heartbeat thread is the worker's only other voice: it renews the leases, flushes a run's queued
events (log lines, its latest progress) to the store and notices a cancel, so the denoising loop
itself never touches the database.

A job's input is parsed into its endpoint's input model once, here; the batch key and the runner
take the parsed object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from hidream_service.config import Settings
from hidream_service.jobs.model import ErrorType, Job, Lease, LogLine, Preview, Progress
from hidream_service.jobs.protocols import JobEndings
from hidream_service.jobs.reports import GpuMemory, ModelLoaded, Report, RunMeasured
from hidream_service.jobs.service import JobService, build_service
from hidream_service.jobs.store import open_store
from hidream_service.logs import configure_logging, job_logging
from hidream_service.models.base import BatchRunner, ImageFile, InputError, JobCancelled, Runner
from hidream_service.models.family import Endpoint
from hidream_service.models.registry import Registry
from hidream_service.safety import SafetyChecker
from hidream_service.storage import LocalOutputStorage, OutputStorage, load_stored_image

if TYPE_CHECKING:
    from hidream_service.inference.lora_cache import LoraCache
    from hidream_service.inference.pipelines import PipelineCache

log = logging.getLogger(__name__)

LOG_FLUSH_SECONDS = 0.5  # progress lines reach status readers at most this late (less with a faster heartbeat)
IDLE_POLL_SECONDS = 1.0  # fallback when a wake-up is missed; new jobs normally wake the worker at once
HEARTBEAT_IDLE_SECONDS = 5.0  # the heartbeat thread ends after this long with no run to serve
#: Told to the server on the changes queue besides job ids: the queue moved (a job left it). A job id
#: with DELIVERY_DUE after it: the job changed and a webhook delivery was enqueued.
QUEUE_MOVED = ""
DELIVERY_DUE = "+delivery"


class PreviewRenderer:
    """Encodes previews on one background thread per worker, so that the denoising loop only hands
    over a small tensor. A run offers its next preview only once its last one is encoded: a slow
    encoder skips previews rather than queueing them up behind the loop."""

    def __init__(self, every_steps: int) -> None:
        self.every_steps = every_steps
        self._executor: ThreadPoolExecutor | None = None

    def due(self, step: int, total: int) -> bool:
        """Every `every_steps` steps, never at the last (the result follows at once)."""
        return self.every_steps > 0 and step % self.every_steps == 0 and step < total

    def render(self, pixels: Any, done: Callable[[str | None], None]) -> None:
        """Encode 8-bit pixels [h, w, 3] on the encoder thread, then call `done` with the data URI
        (None if it failed)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="previews")
        self._executor.submit(self._encode, pixels, done)

    @staticmethod
    def _encode(pixels: Any, done: Callable[[str | None], None]) -> None:
        from hidream_service.inference.previews import preview_data_uri

        try:
            done(preview_data_uri(pixels))
        except Exception:
            log.exception("a preview could not be rendered; the job goes on without it")
            done(None)


NO_PREVIEWS = PreviewRenderer(0)


@dataclass
class WorkerRunContext:
    """RunContext for one job: events are queued in memory, cancel is an in-memory flag."""

    job_id: str
    base_url: str
    storage: OutputStorage
    safety: SafetyChecker
    previews: PreviewRenderer = NO_PREVIEWS
    cancel_event: threading.Event = field(default_factory=threading.Event)
    _pending: list[LogLine] = field(default_factory=list)
    _progress: Progress | None = None
    _preview: Preview | None = None
    _preview_rendering: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _first_step: tuple[float, int] | None = None  # (perf_counter, step) of the run's first progress event
    _last_step: tuple[float, int] | None = None

    def log(self, message: str, level: str = "INFO") -> None:
        with self._lock:
            self._pending.append(LogLine(time.time(), level, message))

    def progress(self, step: int, total: int) -> None:
        event = Progress(step, total)
        now = time.perf_counter()
        with self._lock:
            self._progress = event
            self._first_step = self._first_step or (now, step)
            self._last_step = (now, step)
            self._pending.append(LogLine(time.time(), "INFO", event.log_line()))

    def preview(self, step: int, total: int, forming: Callable[[], Any]) -> None:
        with self._lock:
            if self._preview_rendering or not self.previews.due(step, total):
                return
            self._preview_rendering = True

        def rendered(image: str | None) -> None:
            with self._lock:
                self._preview_rendering = False
                if image is not None:
                    self._preview = Preview(step, image)

        from hidream_service.inference.previews import preview_pixels

        try:
            pixels = preview_pixels(forming())
        except Exception:
            rendered(None)
            raise
        self.previews.render(pixels, rendered)

    def take_events(self) -> tuple[list[LogLine], Progress | None, Preview | None]:
        """The log lines queued since the last take, and the progress and preview if they moved since."""
        with self._lock:
            lines, self._pending = self._pending, []
            progress, self._progress = self._progress, None
            preview, self._preview = self._preview, None
        return lines, progress, preview

    def steps_per_second(self) -> float | None:
        """The run's denoising rate, between its first and last progress events (the first step's
        time includes the model's warm-up, so it is left out)."""
        with self._lock:
            first, last = self._first_step, self._last_step
        if first is None or last is None or last[0] <= first[0] or last[1] <= first[1]:
            return None
        return (last[1] - first[1]) / (last[0] - first[0])

    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def save_image(self, index: int, image: Any, output_format: str, *, sync_mode: bool) -> ImageFile:
        return self.storage.save_image(
            self.job_id, index, image, output_format, base_url=self.base_url, sync_mode=sync_mode
        )

    def load_image(self, url: str) -> Any:
        return load_stored_image(self.storage, url)

    def screen(self, images: list[Any]) -> tuple[list[Any], list[bool]]:
        screened = self.safety.screen(images)
        for index, (flagged, score) in enumerate(zip(screened.flagged, screened.scores, strict=True)):
            if flagged:
                self.log(f"image {index} flagged by the safety checker (score {score:.2f}); replaced with black")
        return screened.images, screened.flagged


@dataclass
class _Held:
    lease: Lease
    ctx: WorkerRunContext
    last_flush: float
    last_renew: float


class Heartbeat:
    """The worker's one heartbeat thread, for the worker's whole life. While runs are held, each tick
    takes a read-only look for a cancel; logs and leases are written less often, because every write
    is a commit and this thread competes with the denoising loop for the GIL.

    One thread rather than one per run: starting and joining a thread costs about a sixth of a
    noop job's time in the worker. It ends after HEARTBEAT_IDLE_SECONDS with nothing held (a worker
    built for one job, as Modal's noop function builds, leaves no thread behind) and the next run
    starts it again.
    """

    def __init__(self, service: JobService, settings: Settings) -> None:
        self._service = service
        self._tick = settings.heartbeat_seconds
        self._renew_every = settings.lease_seconds / 3
        self._lock = threading.Lock()  # held by a tick while it serves the runs, and to change them
        self._held: list[_Held] = []
        self._thread: threading.Thread | None = None
        self._parent = os.getppid()

    @contextmanager
    def holding(self, runs: list[tuple[Lease, WorkerRunContext]]) -> Iterator[None]:
        """Keep these runs' leases while the block runs. Leaving it, even by an exception from
        outside (Modal's input cancellation is a BaseException), waits out a tick in progress, so
        nothing is written for them afterwards."""
        now = time.monotonic()
        with self._lock:
            self._held = [_Held(lease, ctx, now, now) for lease, ctx in runs]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat_while_needed, name="heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held = []

    def held(self) -> list[str]:
        """Ids of the jobs whose leases are being kept."""
        with self._lock:
            return [held.lease.job.id for held in self._held]

    def running(self) -> threading.Thread | None:
        """The heartbeat thread, while there is one."""
        with self._lock:
            return self._thread if self._thread is not None and self._thread.is_alive() else None

    def _beat_while_needed(self) -> None:
        last_busy = time.monotonic()
        while True:
            time.sleep(self._tick)
            if os.getppid() != self._parent:
                os._exit(1)  # the server is gone; a new one re-runs the job
            with self._lock:
                if self._held:
                    last_busy = time.monotonic()
                    # A run whose lease is gone is let go of, should its release ever have been missed.
                    self._held = [held for held in self._held if self._beat(held)]
                elif time.monotonic() - last_busy > HEARTBEAT_IDLE_SECONDS:
                    self._thread = None
                    return

    def _beat(self, held: _Held) -> bool:
        """One tick for one run; False once its lease is no longer ours."""
        now = time.monotonic()
        try:
            if now - held.last_renew >= self._renew_every:
                ours, cancel = self._service.heartbeat(held.lease, *held.ctx.take_events())
                held.last_renew = held.last_flush = now
            else:
                if now - held.last_flush >= min(LOG_FLUSH_SECONDS, 2 * self._tick):
                    self._service.record(held.lease, *held.ctx.take_events())
                    held.last_flush = now
                ours, cancel = self._service.lease_state(held.lease)
        except Exception:
            with job_logged(held.lease.job):
                log.exception("heartbeat of %s failed; retrying", held.lease.job.id)
            return True
        if cancel or not ours:
            held.ctx.cancel_event.set()
        return ours


@dataclass(frozen=True)
class _Outcome:
    result: dict[str, Any] | None = None
    cancelled: bool = False
    error: tuple[ErrorType, str, Any] | None = None


class Runners:
    """Endpoint id -> its family's runner, made on first use; weights load only when a runner first
    asks for its model."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        on_report: Callable[[Report], None] = lambda report: None,
        lora_cache: LoraCache | None = None,  # None: a LoraCache on HIDREAM_LORA_CACHE_DIR
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.on_report = on_report
        self.lora_cache = lora_cache
        self._runners: dict[str, Runner] = {}
        self._pipelines: PipelineCache | None = None

    def endpoint(self, endpoint_id: str) -> Endpoint:
        return self.registry.endpoints[endpoint_id]

    def get(self, endpoint_id: str) -> Runner:
        runner = self._runners.get(endpoint_id)
        if runner is None:
            endpoint = self.endpoint(endpoint_id)
            runner = self._runners[endpoint_id] = endpoint.family.runner(endpoint, self.pipelines)
        return runner

    def preload(self, endpoint_id: str) -> None:
        """Load the model behind `endpoint_id` now instead of at its first job (a Modal container's
        @enter hook, so that the first request does not pay for it)."""
        model = self.endpoint(endpoint_id).model
        if model is not None:
            self.pipelines().get(model)

    def pipelines(self) -> PipelineCache:
        """The worker's PipelineCache, made on first use (tiny weights are built then, once)."""
        if self._pipelines is None:
            from hidream_service.inference.pipelines import pick_device
            from hidream_service.inference.weights import WeightsError, resolve_weights

            layout = resolve_weights(self.settings.weights, self.settings.data_dir)
            if layout is None:
                raise WeightsError("this server was started without --weights")
            if layout.tiny:
                self.registry.ensure_tiny_weights(layout)
            device = pick_device(self.settings.device)
            self._pipelines = self.registry.pipelines(
                layout,
                device,
                self.settings.max_loaded_pipelines,
                on_loaded=lambda model, seconds: self.on_report(ModelLoaded(model, seconds)),
                memory_mode=self.settings.memory_mode,
            )
            from hidream_service.inference.lora_cache import LoraCache
            from hidream_service.inference.loras import RequestLoras

            lora_files = self.lora_cache or LoraCache(self.settings.lora_cache_path, self.settings.lora_cache_bytes)
            self._pipelines.loras = RequestLoras(lora_files, self.settings.max_loaded_loras)
        return self._pipelines


@dataclass
class _Run:
    """One leased job on its way through a run: its lease, its context and its parsed input."""

    lease: Lease
    ctx: WorkerRunContext
    params: Any = None  # the input model instance; None when the input did not parse
    failure: _Outcome | None = None


class Worker:
    def __init__(
        self,
        name: str,
        settings: Settings,
        service: JobService,
        runners: Runners,
        wake: Event | None = None,
        storage: OutputStorage | None = None,
        on_batched: Callable[[str], None] = lambda job_id: None,
    ) -> None:
        self.name = name
        self.on_batched = on_batched  # a queued job was leased into this worker's batch
        self.settings = settings
        self.service = service
        self.runners = runners
        self.wake = wake
        self.storage = storage or LocalOutputStorage(settings.outputs_path)
        self.safety = SafetyChecker(settings.nsfw_threshold)
        self.heartbeat = Heartbeat(service, settings)
        self.previews = PreviewRenderer(settings.preview_every_steps)

    def run_forever(self, parent_pid: int) -> None:
        assert self.wake is not None, "a polling worker needs its wake-up event"
        while os.getppid() == parent_pid:
            self.wake.clear()
            lease = self.service.lease_next(self.name)
            if lease is None:
                self.wake.wait(IDLE_POLL_SECONDS)
                continue
            with job_logged(lease.job):
                self.run_one(lease)

    def run_one(self, lease: Lease) -> None:
        """Run a leased job, with compatible queued jobs as one batch when its runner can."""
        first = self._parsed(lease)
        runs = [first, *self._batch_mates(first)]
        for run in runs:
            run.ctx.log(f"running on worker {self.name} (attempt {run.lease.job.attempts})")
        started = time.perf_counter()
        try:
            with self.heartbeat.holding([(run.lease, run.ctx) for run in runs]):
                if len(runs) > 1:
                    outcomes = self._execute_batch(lease.job.endpoint, runs)
                else:
                    outcomes = [self._execute(lease.job.endpoint, first)]
        except BaseException:
            # Interrupted from outside (Modal's input cancellation): whoever ends the job, keep what it logged.
            for run in runs:
                with contextlib.suppress(Exception):
                    self.service.record(run.lease, *run.ctx.take_events())
            raise
        self._report_run(lease.job.endpoint, runs)
        for run, outcome in zip(runs, outcomes, strict=True):
            self._finish(run, outcome, started)

    def _parsed(self, lease: Lease) -> _Run:
        """The run of a leased job, with its input parsed into its endpoint's model (the one parse)."""
        ctx = WorkerRunContext(lease.job.id, lease.job.base_url, self.storage, self.safety, self.previews)
        run = _Run(lease, ctx)
        try:
            run.params = self.runners.endpoint(lease.job.endpoint).parse(lease.job.input)
        except Exception as exc:  # a stored input that no longer parses, or an endpoint no longer served
            run.failure = _failure(exc, lease.job.id)
        return run

    def _batch_mates(self, first: _Run) -> list[_Run]:
        """Queued jobs that can share `first`'s model call, leased under the same holder as `first`
        (on Modal, its FunctionCall). A polling worker waits up to batch_wait_seconds for them; one
        without a wake-up event (a spawned call on Modal) takes only those already queued."""
        limit = self.settings.batch_max_size - 1
        if limit < 1 or first.params is None:
            return []
        try:
            runner = self.runners.get(first.lease.job.endpoint)
        except Exception:
            return []  # the run itself reports what is wrong
        if not isinstance(runner, BatchRunner):
            return []
        key = runner.batch_key(first.params)
        if key is None:
            return []
        endpoint = self.runners.endpoint(first.lease.job.endpoint)
        parsed: dict[str, Any] = {}  # a candidate's input is parsed once, then run as parsed

        def is_mate(job: Job) -> bool:
            try:
                params = parsed[job.id] = endpoint.parse(job.input)
            except Exception:
                return False  # it runs alone, and reports its own error
            return bool(runner.batch_key(params) == key)

        mates: list[_Run] = []
        holder = first.lease.token.rpartition(":")[0]
        deadline = time.monotonic() + (self.settings.batch_wait_seconds if self.wake is not None else 0.0)
        while True:
            for lease in self.service.lease_batch_mates(first.lease, holder, is_mate, limit - len(mates)):
                ctx = WorkerRunContext(lease.job.id, lease.job.base_url, self.storage, self.safety, self.previews)
                mates.append(_Run(lease, ctx, parsed[lease.job.id]))
                self.on_batched(lease.job.id)
            remaining = deadline - time.monotonic()
            if len(mates) == limit or remaining <= 0 or self.wake is None:
                return mates
            self.wake.clear()
            self.wake.wait(min(remaining, IDLE_POLL_SECONDS))

    def _report_run(self, endpoint_id: str, runs: list[_Run]) -> None:
        on_report = self.runners.on_report
        on_report(RunMeasured(endpoint_id, len(runs), runs[0].ctx.steps_per_second()))
        model = self.runners.endpoint(endpoint_id).model
        memory = None if model is None else _cuda_memory()
        if model is not None and memory is not None:
            on_report(GpuMemory(self.name, model, *memory))

    def _finish(self, run: _Run, outcome: _Outcome, started: float) -> None:
        lease, ctx = run.lease, run.ctx
        ctx.log("cancelled" if outcome.cancelled else "failed" if outcome.error else "done")
        logs, progress, _ = ctx.take_events()  # every event lands with the ending, in its transaction
        if outcome.result is not None:
            inference_time = outcome.result.get("timings", {}).get("inference", time.perf_counter() - started)
            ended = self.service.complete(lease, outcome.result, inference_time, logs, progress)
        elif outcome.cancelled:
            ended = self.service.acknowledge_cancel(lease, logs, progress)
        else:
            error_type, message, detail = outcome.error or (ErrorType.INFERENCE, "no result", None)
            ended = self.service.fail(lease, error_type, message, detail, logs, progress)
        with job_logged(lease.job):
            if not ended:
                log.warning("job %s: lease lost before the outcome could be written; dropped this run", lease.job.id)
            else:
                log.info("job %s %s in %.3f s", lease.job.id, _ending_word(outcome), time.perf_counter() - started)

    def _execute(self, endpoint: str, run: _Run) -> _Outcome:
        if run.failure is not None:
            return run.failure
        try:
            return _Outcome(result=self.runners.get(endpoint)(run.params, run.ctx))
        except Exception as exc:
            return _failure(exc, run.ctx.job_id)

    def _execute_batch(self, endpoint: str, runs: list[_Run]) -> list[_Outcome]:
        runner = self.runners.get(endpoint)
        assert isinstance(runner, BatchRunner)
        try:
            results = runner.run_batch([(run.params, run.ctx) for run in runs])
        except Exception as exc:
            return [_failure(exc, run.ctx.job_id) for run in runs]
        return [
            _failure(result, run.ctx.job_id) if isinstance(result, Exception) else _Outcome(result=result)
            for result, run in zip(results, runs, strict=True)
        ]


def job_logged(job: Job) -> contextlib.AbstractContextManager[None]:
    """Lines logged inside the block carry the job's request id, endpoint and dialect."""
    return job_logging(job.id, job.endpoint, job.dialect)


def _ending_word(outcome: _Outcome) -> str:
    if outcome.cancelled:
        return "cancelled"
    return "completed" if outcome.error is None and outcome.result is not None else "failed"


def _failure(exc: Exception, job_id: str) -> _Outcome:
    """How a runner's exception ends its job."""
    if isinstance(exc, JobCancelled):
        return _Outcome(cancelled=True)
    if isinstance(exc, InputError):
        detail = [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]
        return _Outcome(error=(ErrorType.VALIDATION, str(exc), detail))
    if isinstance(exc, ValidationError):
        errors = [{**error, "loc": ["body", *error["loc"]]} for error in exc.errors(include_url=False)]
        return _Outcome(error=(ErrorType.VALIDATION, "input failed validation", errors))
    log.error("job %s failed", job_id, exc_info=exc)
    return _Outcome(error=(ErrorType.INFERENCE, f"{type(exc).__name__}: {exc}", None))


def _cuda_memory() -> tuple[int, int] | None:
    """(allocated, peak) bytes on this worker's CUDA device, or None where CUDA is not in use."""
    import sys

    torch = sys.modules.get("torch")  # a worker that never imported torch uses no GPU
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.memory_allocated()), int(torch.cuda.max_memory_allocated())


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the server process dies (kill -9 included)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the parent-pid check in the loops covers it


def worker_main(
    name: str,
    settings: Settings,
    wake: Event,
    changes: Queue[str | Report | tuple[str, tuple[Report, ...]]],
    parent_pid: int,
    registry: Registry,
    endings: JobEndings,
) -> None:
    """Entry point of a worker process (started with the 'spawn' method): the server hands it the
    registry of families it serves and its dialects' endings, pickled."""
    _die_with_parent()
    if os.getppid() != parent_pid:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the server, which stops us
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    configure_logging(settings.log_format, worker=name)
    store = open_store(settings)

    delivery_due = threading.Event()  # set just before the change of the job whose delivery it is
    # Reports for the metrics ride along with the next change message (every report is followed by
    # one: a lease, an ending): one message per change, as without metrics.
    reports = ReportsInWaiting()

    def send(message: str) -> None:
        waiting = reports.take()
        changes.put((message, waiting) if waiting else message)

    def changed(job_id: str) -> None:
        if delivery_due.is_set():
            delivery_due.clear()
            send(job_id + DELIVERY_DUE)
        else:
            send(job_id)

    def queue_moved() -> None:
        send(QUEUE_MOVED)

    service = build_service(
        settings,
        store,
        endings=endings,
        on_submitted=lambda job: wake.set(),
        on_changed=changed,
        on_queue_moved=queue_moved,
        on_delivery_due=delivery_due.set,
        on_report=reports.add,
    )
    runners = Runners(settings, registry, on_report=reports.add)
    for endpoint_id in settings.preload:
        # Before the first lease, so the first request does not pay for imports and the weight load.
        started = time.perf_counter()
        try:
            runners.preload(endpoint_id)
        except Exception:
            log.exception("could not preload %s; it will load on its first job", endpoint_id)
        else:
            log.info("preloaded %s in %.1f s", endpoint_id, time.perf_counter() - started)
    for report in reports.take():  # the loads: no change follows them before the first job
        changes.put(report)
    Worker(name, settings, service, runners, wake).run_forever(parent_pid)


class ReportsInWaiting:
    """Reports gathered by the worker's threads until the next change message carries them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[Report] = []

    def add(self, report: Report) -> None:
        with self._lock:
            self._waiting.append(report)

    def take(self) -> tuple[Report, ...]:
        with self._lock:
            taken = tuple(self._waiting)
            self._waiting.clear()
        return taken
