"""Job change notifications inside the API process, per job.

A status stream or a synchronous wait watches its own job and wakes only when that job changes, so
the store reads grow with the changes of watched jobs, not with watchers x changes. One exception:
a queued job's place changes when a job ahead of it leaves the queue, so the watchers of queued jobs
also wake when the queue moves (`queue_moved_threadsafe`). Workers announce changes from other
threads (and, through the pool, other processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class _Pending:
    changed: set[str] = field(default_factory=set)
    moved: bool = False
    delivery_due: bool = False
    everything: bool = False


class _Watched:
    """One watched job: a change counter, the event its watchers wait on, and whether it was queued
    when last read (then the queue moving changes it too)."""

    __slots__ = ("moved", "queued", "version", "watchers")

    def __init__(self) -> None:
        self.version = 0
        self.watchers = 0
        self.queued = False
        self.moved = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        moved, self.moved = self.moved, asyncio.Event()
        moved.set()


class JobWatch:
    """A watcher's handle: note `version`, read the job, then wait for the version to move, so a
    change that lands between the read and the wait is never missed."""

    def __init__(self, watched: _Watched) -> None:
        self._watched = watched

    @property
    def version(self) -> int:
        return self._watched.version

    def read(self, queued: bool) -> None:
        """Say what the last read found: a queued job also wakes when the queue moves."""
        self._watched.queued = queued

    async def changed_since(self, version: int, timeout: float) -> bool:
        """Wait until the job changes after `version`; False on timeout."""
        if self._watched.version != version:
            return True
        try:
            await asyncio.wait_for(self._watched.moved.wait(), timeout)
        except TimeoutError:
            return False
        return True


class JobEvents:
    """Notifications from other threads are gathered and handed to the loop in one call: waking
    the loop is a write to its self-pipe, and a job's end alone brings several (it changed, the
    queue moved, a webhook is due)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_delivery_due: Callable[[], None] = lambda: None) -> None:
        self._loop = loop
        self._on_delivery_due = on_delivery_due  # the webhook sender looks for new work
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._pending: _Pending | None = None  # gathered since the loop last took them

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[JobWatch]:
        """Watch one job for as long as the block runs (on the event loop's thread)."""
        watched = self._watched.get(job_id)
        if watched is None:
            watched = self._watched[job_id] = _Watched()
        watched.watchers += 1
        try:
            yield JobWatch(watched)
        finally:
            watched.watchers -= 1
            if watched.watchers == 0:
                del self._watched[job_id]

    def notify_threadsafe(self, job_id: str) -> None:
        with self._gathering() as pending:
            pending.changed.add(job_id)

    def queue_moved_threadsafe(self) -> None:
        """A job left the queue (or came back to it): the places of queued jobs changed."""
        with self._gathering() as pending:
            pending.moved = True

    def delivery_due_threadsafe(self) -> None:
        """A webhook delivery was enqueued: the sender claims it (and only then: most job changes,
        such as a lease or a log flush, enqueue none)."""
        with self._gathering() as pending:
            pending.delivery_due = True

    def notify_all_threadsafe(self) -> None:
        """Every watched job may have changed (where changes are only seen by polling the store)."""
        with self._gathering() as pending:
            pending.everything = True

    @contextlib.contextmanager
    def _gathering(self) -> Iterator[_Pending]:
        with self._lock:
            first = self._pending is None
            if self._pending is None:
                self._pending = _Pending()
            yield self._pending
        if first:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._take)

    def _take(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.everything:
            for watched in self._watched.values():
                watched.bump()
        else:
            for job_id in pending.changed:
                changed = self._watched.get(job_id)
                if changed is not None:
                    changed.bump()
            if pending.moved:
                for watched in self._watched.values():
                    if watched.queued:
                        watched.bump()
        if pending.delivery_due or pending.everything:
            self._on_delivery_due()

    @property
    def watched(self) -> int:
        """Jobs being watched now."""
        return len(self._watched)
