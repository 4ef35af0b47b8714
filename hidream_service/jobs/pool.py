"""The worker pool, run by the server process: starts workers, wakes them, replaces the dead.

Workers are separate processes (spawned, so CUDA and threads are safe) that share only the
database, one wake-up Event and one queue on which they announce which job changed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import uuid
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from typing import Any

from hidream_service.config import Settings
from hidream_service.jobs.model import Job
from hidream_service.jobs.protocols import JobEndings
from hidream_service.jobs.service import JobService
from hidream_service.jobs.worker import DELIVERY_DUE, QUEUE_MOVED, worker_main
from hidream_service.models.registry import Registry

log = logging.getLogger(__name__)

MONITOR_SECONDS = 0.5


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
        return {"workers": self.pool.alive() if self.pool is not None else 0}


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
    ) -> None:
        self.settings = settings
        self.service = service
        self.on_job_changed = on_job_changed
        self.on_queue_moved = on_queue_moved
        self.on_delivery_due = on_delivery_due
        self.registry = registry
        self.endings = endings
        self._ctx = multiprocessing.get_context("spawn")
        self._wake = self._ctx.Event()
        self._changes: Any = self._ctx.Queue()
        self._workers: dict[int, tuple[str, SpawnProcess]] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

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
        return sum(process.is_alive() for _, process in self._workers.values())

    def pids(self) -> list[int]:
        return [process.pid for _, process in self._workers.values() if process.pid is not None]

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        for _, process in self._workers.values():
            process.terminate()
        for _, process in self._workers.values():
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
        self._changes.put(None)  # ends the relay thread
        for thread in self._threads:
            thread.join(timeout)

    def _start_worker(self, slot: int) -> None:
        # Prefixed with the node's name: a restarted node recovers its own workers' leases by it.
        name = f"{self.settings.node_id or 'node'}.w{slot}-{uuid.uuid4().hex[:8]}"
        process = self._ctx.Process(
            target=worker_main,
            args=(name, self.settings, self._wake, self._changes, os.getpid(), self.registry, self.endings),
            name=f"hidream-worker-{slot}",
            daemon=True,
        )
        process.start()
        self._workers[slot] = (name, process)
        log.info("started worker %s (pid %s)", name, process.pid)

    def _monitor(self) -> None:
        while not self._stopping.wait(MONITOR_SECONDS):
            for slot, (name, process) in list(self._workers.items()):
                if process.is_alive() or self._stopping.is_set():
                    continue
                log.error("worker %s (pid %s) exited with %s; replacing it", name, process.pid, process.exitcode)
                recovered = self.service.recover_holder(name)
                if recovered:
                    log.warning("recovered %d job(s) of worker %s", recovered, name)
                self._start_worker(slot)
            try:
                self.service.recover_expired_leases()
            except Exception:
                log.exception("lease sweep failed")

    def _relay_changes(self) -> None:
        while True:
            job_id = self._changes.get()
            if job_id is None:
                return
            if job_id == QUEUE_MOVED:
                self.on_queue_moved()
            elif job_id.endswith(DELIVERY_DUE):
                self.on_delivery_due()
                self.on_job_changed(job_id.removesuffix(DELIVERY_DUE))
            else:
                self.on_job_changed(job_id)
