"""fal's proxy path: which route each x-fal-target-url reaches, and which it may not."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import pytest
from starlette.types import Message, Receive, Scope, Send

from hidream_service.api.fal_proxy import PROXY_PATH, FalProxy

HOST = "127.0.0.1:8000"


class RecordingApp:
    """The app behind the middleware: records the request it was handed and answers 204."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def proxied(target: str | None, *, public_url: str | None = None, path: str = PROXY_PATH) -> tuple[Any, ...]:
    """Sends one request through FalProxy: (the scope the app saw or None, status, JSON body or None)."""
    app = RecordingApp()
    headers = [(b"host", HOST.encode()), (b"authorization", b"Key k")]
    if target is not None:
        headers.append((b"x-fal-target-url", target.encode()))
    scope = {
        "type": "http", "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"ignored=1", "root_path": "", "headers": headers,
    }  # fmt: skip
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(FalProxy(app, public_url=public_url)(scope, receive, send))
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return (app.scopes[0] if app.scopes else None), sent[0]["status"], (json.loads(body) if body else None)


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("https://queue.fal.run/fal-ai/hidream-i1-full?fal_webhook=https%3A%2F%2Fh", "/fal-ai/hidream-i1-full",
         "fal_webhook=https%3A%2F%2Fh"),
        ("https://queue.fal.run/hidream/noop/requests/a/status/stream?logs=1", "/hidream/noop/requests/a/status/stream",
         "logs=1"),
        ("https://Queue.Fal.Run:443/hidream/noop/requests/a", "/hidream/noop/requests/a", ""),
        ("https://fal.run/fal-ai/hidream-e1-full", "/run/fal-ai/hidream-e1-full", ""),
        ("https://fal.run/fal-ai/hidream-e1-full/stream", "/run/fal-ai/hidream-e1-full/stream", ""),
        ("https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3", "/storage/upload/initiate",
         "storage_type=fal-cdn-v3"),
        ("https://rest.alpha.fal.ai/storage/auth/token", "/storage/auth/token", ""),
        (f"http://{HOST}/hidream/noop/requests/a/status", "/hidream/noop/requests/a/status", ""),
        (f"http://{HOST}/files/a%20b/0.png", "/files/a b/0.png", ""),
    ],
)  # fmt: skip
def test_a_fal_or_own_target_reaches_its_route(target: str, path: str, query: str) -> None:
    scope, status, _ = proxied(target)

    assert status == 204
    assert scope["path"] == path
    assert scope["raw_path"] == quote(path).encode()  # as sent: escapes kept
    assert scope["query_string"] == query.encode()
    headers = dict(scope["headers"])
    assert b"x-fal-target-url" not in headers
    assert headers[b"authorization"] == b"Key k"  # the caller's key goes with it: auth is the route's


def test_urls_under_the_public_url_reach_their_route() -> None:
    scope, status, _ = proxied(
        "https://images.example.com/hidream/files/x/0.png", public_url="https://images.example.com/hidream"
    )

    assert status == 204 and scope["path"] == "/files/x/0.png"


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:9/hook",  # another port of this machine
        "http://localhost:8000/hidream/noop",  # this server under a name the request did not use
        "https://queue.fal.run.example.com/hidream/noop",
        "https://example.com/queue.fal.run/hidream/noop",
        "https://user@queue.fal.run/hidream/noop",
        "https://ws.fal.run/fal-ai/app/realtime",
        "https://rest.fal.ai/tokens/",  # a rest host's non-storage path
        "https://169.254.169.254/latest/meta-data/",
    ],
)
def test_any_other_target_is_refused_in_fals_shape(target: str) -> None:
    scope, status, body = proxied(target)

    assert scope is None
    assert status == 412
    assert isinstance(body["detail"], str) and "fetches nothing" in body["detail"]


@pytest.mark.parametrize("target", [None, "", "ftp://queue.fal.run/x", "queue.fal.run/hidream/noop", "https://[::1"])
def test_a_missing_or_unreadable_target_is_a_400(target: str | None) -> None:
    scope, status, body = proxied(target)

    assert scope is None and status == 400 and isinstance(body["detail"], str)


def test_other_paths_pass_untouched() -> None:
    scope, status, _ = proxied("https://evil.example/x", path="/hidream/noop")

    assert status == 204 and scope["path"] == "/hidream/noop"
    assert scope["query_string"] == b"ignored=1"
