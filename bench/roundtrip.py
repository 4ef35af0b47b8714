"""hidream/noop through the whole service with N jobs in flight: submit -> signed webhook received.

    .venv/bin/python bench/roundtrip.py [--jobs 200] [--in-flight 1] [--synchronous FULL|NORMAL] [--json F]

Starts `hidream serve` on a fresh data dir and a webhook receiver on loopback. `--in-flight N` keeps N
submitters busy, each submitting a job and waiting for its webhook. Prints, as p50/p90/p99:
submit -> webhook received, and job completed (as the database records it) -> webhook received,
which is the delivery path alone; and jobs/s. (bench/run.py compares the sequential case with cog.)
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Process, Receiver, free_port, summary, wait_ready


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--in-flight", type=int, default=1, help="concurrent submitters")
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    receiver = Receiver(lambda body: body.get("request_id"))
    with tempfile.TemporaryDirectory() as data_dir:
        command = [sys.executable, "-m", "hidream_service", "serve", "--port", str(port), "--data-dir", data_dir]
        with Process(command, env={"HIDREAM_SQLITE_SYNCHRONOUS": args.synchronous}):
            wait_ready(f"{base}/health", lambda response: response.status_code == 200)

            def one_job(client: httpx.Client) -> tuple[str, float]:
                started = time.perf_counter()
                response = client.post(f"{base}/hidream/noop", params={"fal_webhook": receiver.url}, json={})
                request_id: str = response.json()["request_id"]
                return request_id, (receiver.wait(request_id) - started) * 1000

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
        with sqlite3.connect(f"{data_dir}/hidream.sqlite3") as conn:
            completed = dict(conn.execute("SELECT id, completed_at FROM jobs").fetchall())
    receiver.close()
    delivery = [(receiver.arrived_wall[request_id] - completed[request_id]) * 1000 for request_id, _ in measured]
    figures: dict[str, Any] = {
        "jobs": args.jobs,
        "in_flight": args.in_flight,
        "sqlite_synchronous": args.synchronous,
        "submit_to_webhook_ms": summary([latency for _, latency in measured]),
        "completed_to_webhook_ms": summary(delivery),
        "jobs_per_s": round(args.jobs / elapsed, 1),
    }
    print(f"hidream/noop, {args.jobs} jobs, {args.in_flight} in flight, synchronous={args.synchronous}")
    for name in ("submit_to_webhook_ms", "completed_to_webhook_ms"):
        row = figures[name]
        print(f"  {name:<26} p50 {row['p50']:>8.2f}  p90 {row['p90']:>8.2f}  p99 {row['p99']:>8.2f}")
    print(f"  {'throughput':<26} {figures['jobs_per_s']} jobs/s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
