"""Prometheus metrics of one node, rendered by `GET /metrics`.

Everything is counted in the server process: the API's own JobService reports submits, queued
cancels and the jobs of dead workers; the workers send their reports (jobs/reports.py) over the
pool's changes queue, which already carries their job changes. No multiprocess mode: no directory of
per-process files to share, and nothing left behind when a worker dies. The backlog (queued and
running jobs by endpoint, pending webhook deliveries) is read from the store when Prometheus scrapes,
so every node sharing a database reports the same backlog.

Label values come from fixed sets only: the registry's endpoint ids and model keys, the dialects'
ids, the job outcomes and the webhook attempt outcomes. Anything else is counted as "other".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hidream_service.jobs.model import ErrorType, JobStatus
from hidream_service.jobs.reports import (
    CANCELLED,
    OK,
    GpuMemory,
    JobEnded,
    JobStarted,
    JobSubmitted,
    ModelLoaded,
    Report,
    RunMeasured,
)
from webhooks.delivery import AttemptOutcome
from webhooks.outbox import Backlog, Delivery

log = logging.getLogger(__name__)
disable_created_metrics()  # type: ignore[no-untyped-call]  # the `_created` series only double the output; nothing here reads them

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
JOB_OUTCOMES = frozenset({OK, CANCELLED, *(error.value for error in ErrorType if error is not ErrorType.CANCELLED)})
ATTEMPT_OUTCOMES = frozenset({"1xx", "2xx", "3xx", "4xx", "5xx", "timeout", "blocked", "error"})
#: Ended jobs with a webhook whose ending has not been delivered yet, remembered for the
#: submit-to-webhook time; beyond this many the oldest are forgotten (their receivers are down).
PENDING_ENDINGS_MAX = 10_000

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_ATTEMPT_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)
_STEPS_PER_SECOND = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)
_LOAD_SECONDS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600)
_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 32)


class ActiveJobs(Protocol):
    def active(self) -> tuple[dict[tuple[str, JobStatus], int], list[str]]: ...


class PendingDeliveries(Protocol):
    def backlog(self, now: float) -> Backlog: ...


class Metrics:
    """The node's metrics: `record` takes a job report (from any thread), `observe_attempt` a webhook
    attempt (from the deliverer), `render` reads the backlog from the store and writes the text
    format (blocking: call it off the event loop)."""

    def __init__(
        self,
        *,
        endpoints: Iterable[str],
        dialects: Iterable[str],
        models: Iterable[str],
        store: ActiveJobs,
        outbox: PendingDeliveries,
        workers_alive: Callable[[], int],
        node: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._endpoints = frozenset(endpoints)
        self._dialects = frozenset(dialects)
        self._models = frozenset(models)
        self._clock = clock
        self._pending_endings: OrderedDict[str, tuple[str, float]] = OrderedDict()  # job id -> (endpoint, created)
        self._lock = threading.Lock()
        self._gpu_peaks: dict[str, int] = {}  # model -> the highest peak any worker reported
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted = Counter(
            "hidream_jobs_submitted", "Jobs queued, by endpoint and dialect.", ["endpoint", "dialect"], registry=r
        )
        self.ended = Counter(
            "hidream_jobs_ended",
            "Jobs ended, by endpoint, dialect and outcome (ok, cancelled, or the error type).",
            ["endpoint", "dialect", "outcome"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "hidream_job_queue_wait_seconds",
            "From submit to a worker's lease.",
            ["endpoint"],
            buckets=_SECONDS,
            registry=r,
        )
        self.run_time = Histogram(
            "hidream_job_run_seconds",
            "From a worker's lease to the job's end.",
            ["endpoint"],
            buckets=_SECONDS,
            registry=r,
        )
        self.submit_to_webhook = Histogram(
            "hidream_job_submit_to_webhook_seconds",
            "From submit to the ending webhook's successful delivery.",
            ["endpoint"],
            buckets=_SECONDS,
            registry=r,
        )
        self.attempts = Counter(
            "hidream_webhook_attempts",
            "Webhook attempts, by outcome: the status class, timeout, blocked (the address guard), error.",
            ["outcome"],
            registry=r,
        )
        self.attempt_latency = Histogram(
            "hidream_webhook_attempt_seconds", "Webhook attempt latency.", buckets=_ATTEMPT_SECONDS, registry=r
        )
        self.steps_per_second = Histogram(
            "hidream_denoising_steps_per_second",
            "Denoising rate of a model call, between its first and last progress events.",
            ["endpoint"],
            buckets=_STEPS_PER_SECOND,
            registry=r,
        )
        self.batch_size = Histogram(
            "hidream_batch_size", "Jobs served by one model call.", ["endpoint"], buckets=_BATCH_SIZES, registry=r
        )
        self.model_load = Histogram(
            "hidream_model_load_seconds",
            "Loading a model's weights in a worker.",
            ["model"],
            buckets=_LOAD_SECONDS,
            registry=r,
        )
        self.gpu_allocated = Gauge(
            "hidream_gpu_memory_allocated_bytes",
            "CUDA memory allocated after the latest run, by model.",
            ["model"],
            registry=r,
        )
        self.gpu_peak = Gauge(
            "hidream_gpu_memory_peak_bytes",
            "Peak CUDA memory allocated by a worker serving the model.",
            ["model"],
            registry=r,
        )
        r.register(_BacklogCollector(self._endpoints, store, outbox, workers_alive, node, clock))

    # -- events ------------------------------------------------------------------------------------

    def record(self, report: Report) -> None:
        """Count one report. Never raises: the pool's relay thread calls it."""
        try:
            self._record(report)
        except Exception:
            log.exception("could not count %r", report)

    def _record(self, report: Report) -> None:
        if isinstance(report, JobSubmitted):
            self.submitted.labels(self._endpoint(report.endpoint), self._dialect(report.dialect)).inc()
        elif isinstance(report, JobStarted):
            self.queue_wait.labels(self._endpoint(report.endpoint)).observe(report.queue_wait_seconds)
        elif isinstance(report, JobEnded):
            endpoint = self._endpoint(report.endpoint)
            outcome = report.outcome if report.outcome in JOB_OUTCOMES else OTHER
            self.ended.labels(endpoint, self._dialect(report.dialect), outcome).inc()
            if report.run_seconds is not None:
                self.run_time.labels(endpoint).observe(report.run_seconds)
            if report.has_webhook:
                with self._lock:
                    self._pending_endings[report.job_id] = (endpoint, report.created_at)
                    while len(self._pending_endings) > PENDING_ENDINGS_MAX:
                        self._pending_endings.popitem(last=False)
        elif isinstance(report, RunMeasured):
            endpoint = self._endpoint(report.endpoint)
            self.batch_size.labels(endpoint).observe(report.batch_size)
            if report.steps_per_second is not None:
                self.steps_per_second.labels(endpoint).observe(report.steps_per_second)
        elif isinstance(report, ModelLoaded):
            self.model_load.labels(self._model(report.model)).observe(report.seconds)
        elif isinstance(report, GpuMemory):
            model = self._model(report.model)
            self.gpu_allocated.labels(model).set(report.allocated_bytes)
            with self._lock:
                peak = self._gpu_peaks[model] = max(self._gpu_peaks.get(model, 0), report.peak_bytes)
            self.gpu_peak.labels(model).set(peak)

    def observe_attempt(self, delivery: Delivery, outcome: AttemptOutcome) -> None:
        """Count one webhook attempt; a delivered ending also gives its job's submit-to-webhook time."""
        kind = outcome.kind if outcome.kind in ATTEMPT_OUTCOMES else "error"
        self.attempts.labels(kind).inc()
        self.attempt_latency.observe(outcome.record.latency_ms / 1000)
        if not outcome.delivered or delivery.id != ending_id(delivery.subject):
            return
        with self._lock:
            pending = self._pending_endings.pop(delivery.subject, None)
        if pending is not None:
            endpoint, created_at = pending
            self.submit_to_webhook.labels(endpoint).observe(max(self._clock() - created_at, 0.0))

    # -- scrape ------------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text format, with the backlog read from the store now (blocking)."""
        return generate_latest(self.registry)

    def _endpoint(self, endpoint: str) -> str:
        return endpoint if endpoint in self._endpoints else OTHER

    def _dialect(self, dialect: str) -> str:
        return dialect if dialect in self._dialects else OTHER

    def _model(self, model: str) -> str:
        return model if model in self._models else OTHER


def ending_id(job_id: str) -> str:
    """The id of a job's ending delivery (`Job.webhook_id`); progress deliveries have others."""
    return f"msg_{job_id.replace('-', '')}"


class _BacklogCollector(Collector):
    """Gauges read at scrape time: the store's backlog (the same on every node) and this node's workers."""

    def __init__(
        self,
        endpoints: frozenset[str],
        store: ActiveJobs,
        outbox: PendingDeliveries,
        workers_alive: Callable[[], int],
        node: str,
        clock: Callable[[], float],
    ) -> None:
        self._endpoints = endpoints
        self._store = store
        self._outbox = outbox
        self._workers_alive = workers_alive
        self._node = node
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # the families are only known when collected

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("hidream_metrics_store_up", "1 when this scrape could read the store's backlog.")
        try:
            active, tokens = self._store.active()
            backlog = self._outbox.backlog(self._clock())
        except Exception as exc:
            log.warning("metrics could not read the store: %s", exc)
            up.add_metric([], 0)
            yield up
            yield from self._workers(None)
            return
        up.add_metric([], 1)
        yield up
        queued = GaugeMetricFamily("hidream_jobs_queued", "Queued jobs in the store, by endpoint.", labels=["endpoint"])
        running = GaugeMetricFamily(
            "hidream_jobs_running", "Running jobs in the store, by endpoint.", labels=["endpoint"]
        )
        for family, status in ((queued, JobStatus.IN_QUEUE), (running, JobStatus.IN_PROGRESS)):
            counts = dict.fromkeys(sorted(self._endpoints), 0)
            for (endpoint, found), n in active.items():
                if found is status:
                    key = endpoint if endpoint in self._endpoints else OTHER
                    counts[key] = counts.get(key, 0) + n
            for endpoint, n in counts.items():
                family.add_metric([endpoint], n)
            yield family
        yield from self._workers(tokens)
        due = GaugeMetricFamily("hidream_webhook_deliveries_due", "Pending webhook deliveries due now.")
        due.add_metric([], backlog.due)
        retrying = GaugeMetricFamily(
            "hidream_webhook_deliveries_retrying", "Pending webhook deliveries that failed at least once."
        )
        retrying.add_metric([], backlog.retrying)
        oldest = GaugeMetricFamily(
            "hidream_webhook_oldest_undelivered_age_seconds", "Age of the oldest pending webhook delivery (0: none)."
        )
        age = 0.0 if backlog.oldest_created_at is None else max(self._clock() - backlog.oldest_created_at, 0.0)
        oldest.add_metric([], age)
        yield from (due, retrying, oldest)

    def _workers(self, tokens: list[str] | None) -> Iterator[Metric]:
        alive = GaugeMetricFamily("hidream_workers_alive", "This node's live worker processes.")
        alive.add_metric([], self._workers_alive())
        yield alive
        if tokens is not None:
            # A lease token is `worker:random`, and this node's worker names start with `node.`.
            mine = {token.partition(":")[0] for token in tokens if token.startswith(self._node + ".")}
            busy = GaugeMetricFamily("hidream_workers_busy", "This node's workers running a job.")
            busy.add_metric([], len(mine))
            yield busy
