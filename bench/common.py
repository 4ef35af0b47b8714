"""What the benchmarks share: loopback ports, a webhook receiver that timestamps arrivals, servers
started as subprocesses, and percentiles."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, ready: Callable[[httpx.Response], bool], timeout: float = 120) -> float:
    """Poll `url` until `ready`; returns the seconds it took."""
    started = time.perf_counter()
    deadline = started + timeout
    while True:
        try:
            if ready(httpx.get(url, timeout=1)):
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout} s")
        time.sleep(0.01)


class Receiver:
    """Webhook receiver on loopback: records when each event (keyed by `key_of(body)`) arrives."""

    def __init__(self, key_of: Callable[[Any], str | None]) -> None:
        self.arrived: dict[str, float] = {}
        self.arrived_wall: dict[str, float] = {}
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                now, wall = time.perf_counter(), time.time()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                key = key_of(json.loads(body))
                if key is None:
                    return
                with receiver._cond:
                    receiver.arrived.setdefault(key, now)
                    receiver.arrived_wall.setdefault(key, wall)
                    receiver._cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 512
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait(self, key: str, timeout: float = 60) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self.arrived, timeout):
                raise TimeoutError(key)
            return self.arrived[key]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2),
        "p90": round(percentile(values, 0.90), 2),
        "p99": round(percentile(values, 0.99), 2),
    }


class Process:
    """A server subprocess, stopped on exit."""

    def __init__(self, command: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.popen = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
