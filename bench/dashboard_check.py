"""Check docs/grafana-dashboard.json against a real Prometheus scraping a server under noop load.

    .venv/bin/python bench/dashboard_check.py                  # about a minute and a half
    .venv/bin/python bench/dashboard_check.py --picture docs/dashboard-prometheus.png

Starts `hidream serve` (no weights: the noop endpoint), a webhook receiver that answers 500 to
one webhook in five (so retries show), and Debian's `prometheus` scraping /metrics every second.
Drives noop jobs for a while, then asks Prometheus for every query of the dashboard (Grafana's
`$__rate_interval` read as 30s) and prints which ones return series. With --picture, Prometheus'
own graph page of the main panels is photographed with Debian's chromium.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
RATE_INTERVAL = "30s"
#: Queries with no series without a GPU or a real model: nothing to check here.
NEEDS_A_MODEL = ("hidream_gpu_memory", "hidream_model_load_seconds", "hidream_denoising_steps_per_second")
PICTURED = (
    "max by (endpoint) (hidream_jobs_queued)",
    "sum by (outcome) (rate(hidream_jobs_ended_total[30s]))",
    "histogram_quantile(0.95, sum by (le, endpoint) (rate(hidream_job_submit_to_webhook_seconds_bucket[30s])))",
    "sum by (outcome) (rate(hidream_webhook_attempts_total[30s]))",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FlakyReceiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(500 if random.random() < 0.2 else 200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        (panel.get("title", ""), target["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for panel in panels
        for target in panel.get("targets", [])
    ]


def wait_for(url: str, timeout: float = 60.0) -> None:
    """Until `url` answers at all (a degraded /health answers too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def drive_load(base: str, hook: str, seconds: float) -> int:
    submitted = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=10) as client:
        while time.monotonic() < deadline:
            steps = random.choice([1, 2, 5, 20])
            client.post(
                "/hidream/noop",
                params={"fal_webhook": hook},
                json={"prompt": "load", "num_steps": steps, "step_seconds": 0.01},
            ).raise_for_status()
            submitted += 1
            time.sleep(random.uniform(0.02, 0.1))
    return submitted


def query(prometheus: str, expr: str) -> list[Any]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    if answer["status"] != "success":
        raise ValueError(answer.get("error", answer))
    result: list[Any] = answer["data"]["result"]
    return result


def photograph(prometheus: str, picture: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    params: dict[str, str] = {}
    for index, expr in enumerate(PICTURED):
        params.update({f"g{index}.expr": expr, f"g{index}.tab": "0", f"g{index}.range_input": "2m"})
    url = f"{prometheus}/graph?{urllib.parse.urlencode(params)}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(url)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(picture), full_page=True)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to drive noop jobs")
    parser.add_argument("--picture", type=Path, help="write a picture of the main panels here")
    args = parser.parse_args()
    if shutil.which("prometheus") is None:
        raise SystemExit("needs Debian's prometheus package: apt-get install prometheus")

    work = Path(tempfile.mkdtemp(prefix="hidream-dashboard-"))
    api_port, prometheus_port = free_port(), free_port()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), FlakyReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: hidream\n    static_configs: [{{targets: ['127.0.0.1:{api_port}']}}]\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "hidream_service", "serve", "--port", str(api_port), "--data-dir", str(work / "data")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base, prometheus_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{prometheus_port}"
    try:
        wait_for(f"{base}/health")
        wait_for(f"{prometheus_url}/-/ready")
        submitted = drive_load(base, hook, args.seconds)
        time.sleep(5)  # the last retries and scrapes
        print(f"{submitted} noop jobs submitted; webhook receiver answers 500 to one in five")
        missing = 0
        for title, expr in dashboard_queries():
            series = query(prometheus_url, expr)
            expected = not any(name in expr for name in NEEDS_A_MODEL)
            mark = "ok" if series else ("no series (needs a model or a GPU)" if not expected else "NO SERIES")
            missing += int(expected and not series)
            print(f"  {mark:<34} {title}: {expr}")
        if args.picture:
            photograph(prometheus_url, args.picture)
            print(f"picture: {args.picture}")
        return 1 if missing else 0
    finally:
        for process in (server, prometheus):
            process.terminate()
            process.wait(timeout=30)
        receiver.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
