"""Real peers for integration tests: a `hidream serve` process on loopback and a webhook receiver."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class ServerProcess:
    """`python -m hidream_service serve` in a subprocess, on its own data dir and port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        weights: str | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.weights = weights
        self.env = {
            "HIDREAM_WEBHOOK_SECRET": TEST_SECRET,
            "HIDREAM_WEBHOOK_RETRY_SCHEDULE": "0,0.2,0.4,0.8",
            "HIDREAM_LEASE_SECONDS": "3",
            "HIDREAM_SQLITE_SYNCHRONOUS": "NORMAL",
            **(env or {}),
        }
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "hidream_service", "serve", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir)]
        if self.weights:
            command += ["--weights", self.weights]
        env = {**os.environ, **self.env}
        for name in list(env):
            if name.startswith("HIDREAM_") and name not in self.env:
                del env[name]  # only what this test says
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            # Its own process group: kill_group() takes the server and its workers down together.
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._healthy, timeout=60)
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """Worker processes (spawned children running worker_main), not multiprocessing's helpers."""
        assert self.process is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.process.pid and "spawn_main" in cmdline:
                pids.append(int(entry.name))
        return pids

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def kill_group(self) -> None:
        """kill -9 of the server and every worker at once, as a machine dying would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (to outlast a client timeout)
    body: bytes = b"ok"


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that records every POST and answers as scripted.

    `responses` are status codes used in order, then 200; `responder(path, nth_call)` decides
    instead when given. GETs are answered from `files` (path -> Reply), else 404: it doubles as a
    remote host of image inputs.
    """

    responses: list[int] = field(default_factory=list)
    responder: Callable[[str, int], Reply] | None = None
    files: dict[str, Reply] = field(default_factory=dict)
    received: list[ReceivedWebhook] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender died mid-request (a crash test): nothing was delivered
                with receiver._lock:
                    nth = sum(hook.path == self.path for hook in receiver.received)
                    if receiver.responder is not None:
                        reply = receiver.responder(self.path, nth)
                    else:
                        reply = Reply(receiver.responses.pop(0) if receiver.responses else 200)
                    receiver.received.append(
                        ReceivedWebhook(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                self._answer(reply)

            def do_GET(self) -> None:
                self._answer(receiver.files.get(self.path, Reply(404, body=b"not found")))

            def _answer(self, reply: Reply) -> None:
                time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 refuses connections under load
            daemon_threads = True
            block_on_close = False  # a reply still sleeping must not hold up the test

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def for_path(self, path: str) -> list[ReceivedWebhook]:
        with self._lock:
            return [hook for hook in self.received if hook.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 30.0) -> list[ReceivedWebhook]:
        wait_until(lambda: len(self.for_path(path)) >= count, timeout=timeout)
        return self.for_path(path)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def close_fal_client(client: Any) -> None:
    """fal-client builds its httpx client lazily and never closes it, nor the one inside its transport."""
    http = client.__dict__.get("_client")
    if http is not None:
        inner = getattr(http._transport, "_client", None)
        if inner is not None:
            inner.close()
        http.close()


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """An app built in this process (`create_app` with arguments a command line cannot give), served
    by uvicorn on a free loopback port until the block ends; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=60)
        assert thread.is_alive(), "the in-process server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
