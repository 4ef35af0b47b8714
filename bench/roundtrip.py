"""hidream/noop through the whole service: submit -> signed webhook received.

    .venv/bin/python bench/roundtrip.py [--jobs 200] [--in-flight 1] [--synchronous FULL|NORMAL] [--json F]

Starts `hidream serve` on a fresh data dir and a webhook receiver on loopback. `--in-flight N` keeps N
submitters busy, each submitting a job and waiting for its webhook. Prints, as p50/p90/p99:
submit -> webhook received, and job completed (as the database records it) -> webhook received,
which is the delivery path alone; and jobs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
        self.arrived_wall: dict[str, float] = {}
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                now, wall = time.perf_counter(), time.time()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                with receiver.cond:
                    request_id = json.loads(body)["request_id"]
                    receiver.arrived[request_id] = now
                    receiver.arrived_wall[request_id] = wall
                    receiver.cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 512

        self.server = Server(("127.0.0.1", 0), Handler)
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


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2),
        "p90": round(percentile(values, 0.90), 2),
        "p99": round(percentile(values, 0.99), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--in-flight", type=int, default=1, help="concurrent submitters")
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

            def one_job(client: httpx.Client) -> tuple[str, float]:
                t0 = time.perf_counter()
                response = client.post(f"{base}/hidream/noop", params={"fal_webhook": receiver.url}, json={})
                request_id = response.json()["request_id"]
                return request_id, (receiver.wait(request_id) - t0) * 1000

            clients = [httpx.Client(timeout=30) for _ in range(args.in_flight)]
            try:
                with ThreadPoolExecutor(args.in_flight) as pool:
                    list(pool.map(one_job, [clients[n % args.in_flight] for n in range(args.warmup)]))
                    started = time.perf_counter()
                    measured = list(pool.map(one_job, [clients[n % args.in_flight] for n in range(args.jobs)]))
                    elapsed = time.perf_counter() - started
            finally:
                for client in clients:
                    client.close()
            latencies = [latency for _, latency in measured]
            with sqlite3.connect(f"{data_dir}/hidream.sqlite3") as conn:
                completed = dict(conn.execute("SELECT id, completed_at FROM jobs").fetchall())
            delivery = [(receiver.arrived_wall[rid] - completed[rid]) * 1000 for rid, _ in measured]
        finally:
            server.terminate()
            server.wait(30)
    figures = {
        "jobs": args.jobs,
        "in_flight": args.in_flight,
        "sqlite_synchronous": args.synchronous,
        "submit_to_webhook_ms": summary(latencies),
        "completed_to_webhook_ms": summary(delivery),
        "jobs_per_s": round(args.jobs / elapsed, 1),
    }
    print(f"hidream/noop, {args.jobs} jobs, {args.in_flight} in flight, synchronous={args.synchronous}")
    for name in ("submit_to_webhook_ms", "completed_to_webhook_ms"):
        row = figures[name]
        print(f"  {name:<26} p50 {row['p50']:>8.2f}  p90 {row['p90']:>8.2f}  p99 {row['p99']:>8.2f}")
    print(f"  {'throughput':<26} {figures['jobs_per_s']} jobs/s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
