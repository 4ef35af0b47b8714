"""Job change notifications inside the API process, for status streams (SSE) and the deliverer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class JobEvents:
    """A change counter: waiters note `version`, read the job, then wait for the counter to move,
    so a change that lands between the read and the wait is never missed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None] = lambda: None) -> None:
        self._loop = loop
        self._on_change = on_change
        self.version = 0
        self._moved = asyncio.Event()

    def notify_threadsafe(self, job_id: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._bump)

    def _bump(self) -> None:
        self.version += 1
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        self._on_change()

    async def wait_past(self, version: int, timeout: float) -> bool:
        """Wait until the counter passes `version`; False on timeout."""
        if self.version != version:
            return True
        try:
            await asyncio.wait_for(self._moved.wait(), timeout)
        except TimeoutError:
            return False
        return True
