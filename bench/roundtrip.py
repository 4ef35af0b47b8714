"""hidream/noop through the whole service with N jobs in flight: submit -> signed webhook received.

    .venv/bin/python bench/roundtrip.py [--jobs 200] [--in-flight 1] [--synchronous FULL|NORMAL] [--json F]

Starts `hidream serve` on a fresh data dir and a webhook receiver on loopback. `--in-flight N` keeps N
submitters busy, each submitting a job and waiting for its webhook. Prints, as p50/p90/p99:
submit -> webhook received, then where that time goes, from the clocks of the client, the job's
row (created, leased, completed) and the receiver: the API up to the commit, the answer, the wake-up
and lease, the run and its ending, and the delivery; and jobs/s. (bench/run.py compares the
sequential case with cog.)
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

# Where a round trip's time goes. The first two and the last three overlap (the answer is sent while
# the worker leases); each is p50 over the jobs, so they need not add up.
STAGES = {
    "sent_to_created": "request sent -> job row written (API, validation)",
    "created_to_answered": "job row written -> answer received (commit, reply)",
    "created_to_leased": "job row written -> leased by a worker (wake-up)",
    "leased_to_completed": "leased -> completed (run, image, ending)",
    "completed_to_webhook": "completed -> webhook received (commit, sender)",
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
    base = f"http://127.0.0.1:{port}"
    receiver = Receiver(lambda body: body.get("request_id"))
    with tempfile.TemporaryDirectory() as data_dir:
        command = [sys.executable, "-m", "hidream_service", "serve", "--port", str(port), "--data-dir", data_dir]
        with Process(command, env={"HIDREAM_SQLITE_SYNCHRONOUS": args.synchronous}):
            wait_ready(f"{base}/health", lambda response: response.status_code == 200)

            def one_job(client: httpx.Client) -> tuple[str, float, float, float]:
                sent_wall, started = time.time(), time.perf_counter()
                response = client.post(f"{base}/hidream/noop", params={"fal_webhook": receiver.url}, json={})
                answered_wall = time.time()
                request_id: str = response.json()["request_id"]
                return request_id, (receiver.wait(request_id) - started) * 1000, sent_wall, answered_wall

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
            rows = conn.execute("SELECT id, created_at, started_at, completed_at FROM jobs").fetchall()
            stamps = {request_id: times for request_id, *times in rows}
    receiver.close()
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    for request_id, _, sent, answered in measured:
        created, started, completed = stamps[request_id]
        arrived = receiver.arrived_wall[request_id]
        for name, (begin, end) in zip(
            STAGES,
            [(sent, created), (created, answered), (created, started), (started, completed), (completed, arrived)],
            strict=True,
        ):
            stages[name].append((end - begin) * 1000)
    figures: dict[str, Any] = {
        "jobs": args.jobs,
        "in_flight": args.in_flight,
        "sqlite_synchronous": args.synchronous,
        "submit_to_webhook_ms": summary([latency for _, latency, _, _ in measured]),
        **{f"{name}_ms": summary(values) for name, values in stages.items()},
        "jobs_per_s": round(args.jobs / elapsed, 1),
    }
    print(f"hidream/noop, {args.jobs} jobs, {args.in_flight} in flight, synchronous={args.synchronous}")
    for name in ("submit_to_webhook", *STAGES):
        row = figures[f"{name}_ms"]
        label = name if name == "submit_to_webhook" else f"  {STAGES[name]}"
        print(f"  {label:<54} p50 {row['p50']:>8.2f}  p90 {row['p90']:>8.2f}  p99 {row['p99']:>8.2f}")
    print(f"  {'throughput':<54} {figures['jobs_per_s']} jobs/s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
