"""How `hidream serve` runs uvicorn: with the limits a server facing unfriendly clients needs.

uvicorn bounds the size of a request head (h11's incomplete-event limit), idle keep-alive
connections and, if asked, the connections it serves at once; it has no deadline for a request head
that arrives slowly (slow-loris), nor for a body that keeps trickling in after the answer was sent.
`bounded_h11_protocol` adds those two to its h11 protocol. A body the app is reading is bounded by
api/guard.py (request_body_timeout_seconds), which can answer it in the route's own shape.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hidream_service.config import Settings
from hidream_service.logs import logging_config

#: Largest request head (request line and headers), h11's default, named here; more is a 400.
MAX_REQUEST_HEAD_BYTES = 16 * 1024
#: How long an idle keep-alive connection is kept (uvicorn's default, named here).
KEEP_ALIVE_SECONDS = 5

_SLOW_HEAD = b"the request line and headers took too long to arrive\n"
_SLOW_HEAD_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    + b"content-length: %d\r\n\r\n" % len(_SLOW_HEAD)
    + _SLOW_HEAD
)


def bounded_h11_protocol(header_timeout: float, body_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with two deadlines: a request head must be complete `header_timeout`
    seconds after the connection opens, or after the first byte of the next request on a kept-alive
    connection (before that byte uvicorn's keep-alive timeout applies); and a body still arriving
    after the answer (no one reads it) must end within `body_timeout`. Past either the connection is
    closed, with a 408 if nothing was answered on it yet."""

    class BoundedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _waiting_for_head = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_timeout, waiting_for_head=True)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow_client()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow_client()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _follow_client(self) -> None:
            """Arm, keep or drop the deadline for what the connection now waits on the client for."""
            if self.transport.is_closing():
                self._disarm()
            elif self.conn.their_state is h11.IDLE:
                # Part of a next request is in (uvicorn drops its keep-alive timer when bytes come,
                # and keeps it for bytes that came with the previous request).
                started = bool(self.conn.trailing_data[0]) or self.timeout_keep_alive_task is None
                if started and not self._waiting_for_head:
                    self._arm(header_timeout, waiting_for_head=True)
            elif self.conn.their_state is h11.SEND_BODY and self.cycle is not None and self.cycle.response_complete:
                if self._deadline is None or self._waiting_for_head:
                    self._arm(body_timeout, waiting_for_head=False)
            else:
                self._disarm()  # the app has the request: its reads are bounded in the app (api/guard.py)

        def _arm(self, seconds: float, *, waiting_for_head: bool) -> None:
            self._disarm()
            self._waiting_for_head = waiting_for_head
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._waiting_for_head = False

        def _expire(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._waiting_for_head and self.conn.our_state is h11.IDLE:
                self.transport.write(_SLOW_HEAD_RESPONSE)
            self.transport.close()

    return BoundedH11Protocol


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration `hidream serve` runs `app` with."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=logging_config(settings.log_format),  # uvicorn's lines, the access log too, in ours
        timeout_graceful_shutdown=5,
        http=bounded_h11_protocol(settings.request_header_timeout_seconds, settings.request_body_timeout_seconds),
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        limit_concurrency=settings.max_connections,
    )
