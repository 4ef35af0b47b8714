"""Blocking calls (the store, the outbox, stored files, the signing keys' state) made from request
handlers run in a worker thread: the event loop keeps answering every other request meanwhile,
however slow the database or the disk is at that moment."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio.to_thread

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
