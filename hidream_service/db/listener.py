"""Hears the other nodes' changes on Postgres (LISTEN), so that a job accepted by one node wakes an
idle worker on any node at once, and a status stream on one node follows a job run by another.

One thread per server with its own connection outside the pool (a LISTEN lives as long as its
connection). When the connection drops, nothing heard in between is replayed: on reconnecting it
calls `resync`, which wakes every worker and watcher to read the store again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from hidream_service.db.engine import CHANNEL, Notice, libpq_url

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0


@dataclass(frozen=True)
class NoticeHandlers:
    queued: Callable[[], None]
    changed: Callable[[str], None]
    moved: Callable[[], None]
    delivery_due: Callable[[], None]
    keys: Callable[[], None]
    resync: Callable[[], None]


class ClusterListener:
    def __init__(self, url: str, node: str, handlers: NoticeHandlers) -> None:
        self._url = libpq_url(url)
        self._node = node
        self._handlers = handlers
        self._stopping = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-listener", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once LISTEN is in place (or `timeout` passed), so that nothing
        committed after start-up is missed."""
        self._thread.start()
        self._listening.wait(timeout)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    if not first:
                        self._handlers.resync()
                    first = False
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            self.dispatch(notice.payload)
            except Exception as exc:  # the connection dropped (Postgres restarted): listen again
                if self._stopping.is_set():
                    return
                log.warning("lost the cluster's notices (%s); listening again", exc)
                first = False
                self._stopping.wait(RECONNECT_SECONDS)

    def dispatch(self, payload: str) -> None:
        node, _, rest = payload.partition(" ")
        if node == self._node:
            return  # this node heard its own change already, without a round trip
        notice, _, job_id = rest.partition(" ")
        try:
            if notice == Notice.CHANGED:
                self._handlers.changed(job_id)
            elif notice == Notice.QUEUED:
                self._handlers.queued()
            elif notice == Notice.MOVED:
                self._handlers.moved()
            elif notice == Notice.DELIVERY_DUE:
                self._handlers.delivery_due()
            elif notice == Notice.KEYS:
                self._handlers.keys()
        except Exception:
            log.exception("handling the notice %r failed", payload)
