"""Submit -> signed webhook received, for hidream/noop, sequential: the service's own overhead.

    .venv/bin/python bench/roundtrip.py [--jobs 200] [--synchronous FULL|NORMAL] [--json out.json]

Starts `hidream serve` on a fresh data dir and a webhook receiver on loopback, then times each job
from the submit POST to the moment its webhook arrives. Prints p50/p90/p99 and jobs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                now = time.perf_counter()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                with receiver.cond:
                    receiver.arrived[json.loads(body)["request_id"]] = now
                    receiver.cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, request_id: str, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: request_id in self.arrived, timeout):
                raise TimeoutError(request_id)
            return self.arrived[request_id]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "HIDREAM_SQLITE_SYNCHRONOUS": args.synchronous}
        server = subprocess.Popen(
            [sys.executable, "-m", "hidream_service", "serve", "--port", str(port), "--data-dir", data_dir],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.1)
            receiver = Receiver()
            latencies = []
            with httpx.Client(timeout=10) as client:
                started = time.perf_counter()
                for n in range(args.warmup + args.jobs):
                    if n == args.warmup:
                        started = time.perf_counter()
                    t0 = time.perf_counter()
                    response = client.post(f"{base}/hidream/noop", params={"fal_webhook": receiver.url}, json={})
                    arrived = receiver.wait(response.json()["request_id"])
                    if n >= args.warmup:
                        latencies.append((arrived - t0) * 1000)
                elapsed = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(30)
    figures = {
        "jobs": args.jobs,
        "sqlite_synchronous": args.synchronous,
        "p50_ms": round(statistics.median(latencies), 2),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "jobs_per_s": round(args.jobs / elapsed, 1),
    }
    print(
        f"noop submit->webhook, {args.jobs} sequential jobs, synchronous={args.synchronous}: "
        f"p50 {figures['p50_ms']} ms  p90 {figures['p90_ms']} ms  p99 {figures['p99_ms']} ms  "
        f"{figures['jobs_per_s']} jobs/s"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
