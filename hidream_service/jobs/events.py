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
from collections.abc import Callable, Iterator


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
    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None] = lambda: None) -> None:
        self._loop = loop
        self._on_change = on_change  # any job changed: the webhook deliverer looks for new work
        self._watched: dict[str, _Watched] = {}

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
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._changed, job_id)

    def queue_moved_threadsafe(self) -> None:
        """A job left the queue (or came back to it): the places of queued jobs changed."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue_moved)

    def notify_all_threadsafe(self) -> None:
        """Every watched job may have changed (where changes are only seen by polling the store)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._all_changed)

    def _changed(self, job_id: str) -> None:
        watched = self._watched.get(job_id)
        if watched is not None:
            watched.bump()
        self._on_change()

    def _queue_moved(self) -> None:
        for watched in self._watched.values():
            if watched.queued:
                watched.bump()

    def _all_changed(self) -> None:
        for watched in self._watched.values():
            watched.bump()
        self._on_change()

    @property
    def watched(self) -> int:
        """Jobs being watched now."""
        return len(self._watched)
