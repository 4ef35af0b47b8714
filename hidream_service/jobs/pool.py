"""The worker pool, run by the server process: starts workers, wakes them, replaces the dead.

Workers are separate processes (spawned, so CUDA and threads are safe) that share only the
database, one wake-up Event and one queue on which they announce which job changed.

The monitor thread outlives whatever the store does: a dead worker's jobs are recovered before its
replacement starts, and when that recovery fails (the disk or the database is full, the database is
unreachable) the slot stays empty and is tried again after a growing delay, as is a worker that keeps
exiting soon after it starts. Meanwhile `problem()` says why, for /health.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import Any

from hidream_service.config import Settings
from hidream_service.jobs.model import Job
from hidream_service.jobs.protocols import JobEndings
from hidream_service.jobs.reports import Report
from hidream_service.jobs.service import JobService
from hidream_service.jobs.worker import DELIVERY_DUE, QUEUE_MOVED, worker_main
from hidream_service.models.registry import Registry
from hidream_service.storage_full import is_storage_full

log = logging.getLogger(__name__)

MONITOR_SECONDS = 0.5
#: Seconds before a slot's next try after its 1st, 2nd, ... failure in a row (a recovery the store
#: refused, or a worker that exited within STARTUP_GRACE_SECONDS); the last repeats.
RETRY_DELAYS = (0.0, 1.0, 2.0, 4.0, 8.0)
STARTUP_GRACE_SECONDS = 10.0
SWEEP = "lease sweep"  # the key of the lease sweep's store error


class LocalExecutor:
    """The embedded executor: a queued job needs only to wake an idle worker, which leases it."""

    def __init__(self) -> None:
        self.pool: WorkerPool | None = None  # None until started (and in tests that run no workers)

    def submitted(self, job: Job) -> None:
        self.wake()

    def wake(self) -> None:
        """A job wants running (here, or on another node sharing the database)."""
        if self.pool is not None:
            self.pool.wake()

    def cancel_requested(self, job: Job) -> None:
        """Nothing to do: the worker's heartbeat sees the flag and stops at the next step."""

    def health(self) -> dict[str, Any]:
        """Live workers, and a `problem` (a sentence) while jobs cannot run here: /health is then a 503."""
        if self.pool is None:
            return {"workers": 0}
        problem = self.pool.problem()
        return {"workers": self.pool.alive(), **({"problem": problem} if problem else {})}


@dataclass
class _Slot:
    """One worker's place in the pool, and how its replacements have fared."""

    name: str
    process: SpawnProcess
    started: float  # time.monotonic()
    failures: int = 0  # in a row: recoveries the store refused, or exits soon after starting
    retry_at: float = 0.0
    exit_seen: bool = False


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        service: JobService,
        on_job_changed: Callable[[str], None],
        *,
        on_queue_moved: Callable[[], None],
        on_delivery_due: Callable[[], None],
        registry: Registry,
        endings: JobEndings,
        on_report: Callable[[Report], None] = lambda report: None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.on_job_changed = on_job_changed
        self.on_queue_moved = on_queue_moved
        self.on_delivery_due = on_delivery_due
        self.on_report = on_report  # the workers' reports, for the metrics
        self.registry = registry
        self.endings = endings
        self._ctx = multiprocessing.get_context("spawn")
        self._wake = self._ctx.Event()
        self._changes: Any = self._ctx.Queue()
        self._slots: dict[int, _Slot] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._store_errors: dict[str, str] = {}  # what failed (a slot's recovery, the sweep) -> why
        self._errors_lock = threading.Lock()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        for slot in range(self.settings.workers):
            self._start_worker(slot)
        for target, name in ((self._monitor, "worker-monitor"), (self._relay_changes, "job-changes")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def alive(self) -> int:
        return sum(slot.process.is_alive() for slot in list(self._slots.values()))

    def pids(self) -> list[int]:
        return [slot.process.pid for slot in list(self._slots.values()) if slot.process.pid is not None]

    def problem(self) -> str | None:
        """Why this pool cannot run jobs now (no worker is alive, or the store refuses the monitor's
        writes), or None."""
        with self._errors_lock:
            store_error = "; ".join(self._store_errors.values()) or None
        if self._slots and self.alive() == 0:
            return f"no worker can run: {store_error or 'the workers exited and are being restarted'}"
        return store_error

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        processes = [slot.process for slot in self._slots.values()]
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
        self._changes.put(None)  # ends the relay thread
        for thread in self._threads:
            thread.join(timeout)

    def _start_worker(self, index: int, failures: int = 0) -> None:
        # Prefixed with the node's name: a restarted node recovers its own workers' leases by it.
        name = f"{self.settings.node_id or 'node'}.w{index}-{uuid.uuid4().hex[:8]}"
        process = self._ctx.Process(
            target=worker_main,
            args=(name, self.settings, self._wake, self._changes, os.getpid(), self.registry, self.endings),
            name=f"hidream-worker-{index}",
            daemon=True,
        )
        process.start()
        self._slots[index] = _Slot(name, process, time.monotonic(), failures)
        log.info("started worker %s (pid %s)", name, process.pid)

    def _monitor(self) -> None:
        while not self._stopping.wait(MONITOR_SECONDS):
            for index, slot in list(self._slots.items()):
                try:
                    self._tend(index, slot)
                except Exception:  # starting a process failed (no memory, no pids): try again later
                    log.exception("could not replace worker %s", slot.name)
                    self._retry_later(slot)
            try:
                self.service.recover_expired_leases()
            except Exception as exc:
                self._store_failed(SWEEP, "sweeping expired leases", exc)
            else:
                self._store_recovered(SWEEP)

    def _tend(self, index: int, slot: _Slot) -> None:
        """Replace the slot's worker if it died, once its jobs are recovered and its delay is over."""
        now = time.monotonic()
        if slot.process.is_alive() or self._stopping.is_set():
            if slot.failures and now - slot.started > STARTUP_GRACE_SECONDS:
                slot.failures = 0  # it started well
            return
        if not slot.exit_seen:
            slot.exit_seen = True
            log.error(
                "worker %s (pid %s) exited with %s; replacing it", slot.name, slot.process.pid, slot.process.exitcode
            )
            if now - slot.started < STARTUP_GRACE_SECONDS:
                self._retry_later(slot)
        if time.monotonic() < slot.retry_at:
            return
        key = f"worker {index}"
        try:
            recovered = self.service.recover_holder(slot.name)
        except Exception as exc:
            self._retry_later(slot)
            self._store_failed(key, f"recovering the jobs of worker {slot.name}", exc)
            return
        self._store_recovered(key)
        if recovered:
            log.warning("recovered %d job(s) of worker %s", recovered, slot.name)
        self._start_worker(index, slot.failures)

    @staticmethod
    def _retry_later(slot: _Slot) -> None:
        slot.failures += 1
        slot.retry_at = time.monotonic() + RETRY_DELAYS[min(slot.failures, len(RETRY_DELAYS)) - 1]

    def _store_failed(self, key: str, doing: str, exc: Exception) -> None:
        """The store refused one of the monitor's calls: say why in `problem()`; log the first
        failure in a row with its traceback, the others in a line."""
        why = f"the job store cannot be written ({exc})" if is_storage_full(exc) else f"the job store failed ({exc!r})"
        with self._errors_lock:
            first = key not in self._store_errors
            self._store_errors[key] = f"{why} while {doing}"
        if first:
            log.exception("%s failed; trying again until it succeeds", doing)
        else:
            log.warning("%s failed again: %s", doing, exc)

    def _store_recovered(self, key: str) -> None:
        with self._errors_lock:
            failed = self._store_errors.pop(key, None)
        if failed is not None:
            log.warning("the job store answers again (%s)", key)

    def _relay_changes(self) -> None:
        while True:
            job_id = self._changes.get()
            if job_id is None:
                return
            if isinstance(job_id, tuple):  # a change carrying the worker's reports since the last one
                job_id, reports = job_id
                for report in reports:
                    self.on_report(report)
            if not isinstance(job_id, str):
                self.on_report(job_id)
            elif job_id == QUEUE_MOVED:
                self.on_queue_moved()
            elif job_id.endswith(DELIVERY_DUE):
                self.on_delivery_due()
                self.on_job_changed(job_id.removesuffix(DELIVERY_DUE))
            else:
                self.on_job_changed(job_id)
