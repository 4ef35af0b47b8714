"""Profile a worker's side of a job, in this process: submit, lease, run, end, as the worker does it.

    .venv/bin/python bench/worker_profile.py noop [--jobs 300]       # hidream/noop: the service's own costs
    .venv/bin/python bench/worker_profile.py tiny [--jobs 5]         # a tiny HiDream-I1 Full job, 50 steps

Prints the mean time per job, then cProfile's top functions by cumulative time. The API's side is
profiled by running the server itself under cProfile while bench/roundtrip.py drives it:
`python -m cProfile -o api.prof -m hidream_service serve --data-dir D`, stopped with Ctrl-C.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hidream_service.config import Settings
from hidream_service.db.schema import migrate
from hidream_service.jobs.model import JobRequest
from hidream_service.jobs.store import open_store
from hidream_service.jobs.worker import Runners, Worker
from hidream_service.models.registry import DEFAULT_REGISTRY
from hidream_service.runtime import job_service

JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "noop": ("hidream/noop", {}),
    "tiny": ("fal-ai/hidream-i1-full", {"prompt": "a red fox in the snow", "num_inference_steps": 50, "seed": 7}),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--jobs", type=int, help="jobs to profile (default: 300 noop, 5 tiny)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    endpoint, body = JOBS[args.job]
    jobs = args.jobs or (300 if args.job == "noop" else 5)

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir), weights="tiny" if args.job == "tiny" else None)
        store = open_store(settings)
        migrate(store.db)
        service = job_service(
            settings, store, DEFAULT_REGISTRY, on_submitted=lambda job: None, on_changed=lambda _: None
        )
        worker = Worker("profile", settings, service, Runners(settings, DEFAULT_REGISTRY))
        request = JobRequest(endpoint, body, webhook_url="http://127.0.0.1:9/hook", base_url="http://127.0.0.1")

        def run(count: int) -> None:
            for _ in range(count):
                service.submit(request)
                lease = service.lease_next(worker.name)
                assert lease is not None
                worker.run_one(lease)

        run(max(jobs // 10, 1))  # warm-up: imports, the weight load, first calls
        started = time.perf_counter()
        run(jobs)
        print(f"{args.job}: {(time.perf_counter() - started) / jobs * 1000:.2f} ms per job: submit, lease, run, end")
        profile = cProfile.Profile()
        profile.runcall(run, jobs)
        pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
