"""The `hidream` command: `serve` runs the server, `run` makes one image from the terminal."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from hidream_service.config import Settings

log = logging.getLogger("hidream_service")

STEP_PREFIX = "step "


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {key: value for key, value in extra.items() if value is not None}
    for name in ("host", "port", "weights", "data_dir", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hidream_service.api import create_app
    from hidream_service.api.app import DataDirInUse, data_dir_lock
    from hidream_service.inference.weights import WeightsError

    settings = _settings(args)
    try:
        with data_dir_lock(settings):
            pass  # fail here with a clear message rather than in the middle of start-up
    except DataDirInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        app = create_app(settings)
    except WeightsError as exc:
        print(f"error: {exc} (see docs/weights.md for the layout, or pass --weights tiny)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not settings.api_keys and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s with no API keys: anyone on the network can submit jobs", settings.host)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)
    return 0


class InProcessServer:
    """The whole server on a free loopback port in this process, for `hidream run` without --server."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from hidream_service.api import create_app

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(create_app(settings), log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> InProcessServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)


def _progress_bar(logs: list[dict[str, Any]]) -> str | None:
    for line in reversed(logs):
        message = str(line.get("message", ""))
        if message.startswith(STEP_PREFIX):
            done, _, total = message[len(STEP_PREFIX) :].partition("/")
            if done.isdigit() and total.isdigit() and int(total) > 0:
                filled = 30 * int(done) // int(total)
                return f"[{'#' * filled}{'.' * (30 - filled)}] step {done}/{total}"
    return None


def _generate(client: httpx.Client, server: str, endpoint: str, arguments: dict[str, Any], out: Path) -> int:
    submitted = client.post(f"{server}/{endpoint}", json=arguments)
    if submitted.status_code >= 400:
        print(f"error: {submitted.status_code} {submitted.text}", file=sys.stderr)
        return 1
    handle = submitted.json()
    print(f"request {handle['request_id']}", file=sys.stderr)
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        while True:
            if interrupted.is_set():
                client.put(handle["cancel_url"])
                print("\ncancelled", file=sys.stderr)
                return 130
            status = client.get(handle["status_url"], params={"logs": "1"}).json()
            if status["status"] == "IN_QUEUE":
                line = f"queued (position {status.get('queue_position', 0)})"
            else:
                line = _progress_bar(status.get("logs") or []) or status["status"].lower().replace("_", " ")
            print(f"\r{line:<60}", end="", file=sys.stderr, flush=True)
            if status["status"] == "COMPLETED":
                print(file=sys.stderr)
                break
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, previous)
    response = client.get(handle["response_url"])
    result = response.json()
    if response.status_code >= 400:
        print(f"error: {result.get('detail')}", file=sys.stderr)
        return 1
    image = result["images"][0]
    url = image["url"]
    if url.startswith("data:"):
        data = base64.b64decode(url.split(",", 1)[1])
    else:
        download = client.get(url)
        download.raise_for_status()
        data = download.content
    out.write_bytes(data)
    print(f"wrote {out} ({image['width']}x{image['height']}, seed {result['seed']})", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    arguments: dict[str, Any] = {"prompt": args.prompt}
    if args.seed is not None:
        arguments["seed"] = args.seed
    if args.steps is not None:
        arguments["num_inference_steps"] = args.steps
    if args.out.suffix.lower() == ".png":
        arguments["output_format"] = "png"
    headers = {"Authorization": f"Key {args.key}"} if args.key else {}
    with httpx.Client(timeout=httpx.Timeout(30.0), headers=headers) as client:
        if args.server:
            return _generate(client, args.server.rstrip("/"), args.endpoint, arguments, args.out)
        settings = _settings(args, host="127.0.0.1", port=0)
        if settings.weights is None:
            print(
                "error: pass --weights PATH (real weights) or --weights tiny, or --server URL",
                file=sys.stderr,
            )
            return 2
        with InProcessServer(settings) as server:
            return _generate(client, server.url, args.endpoint, arguments, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hidream", description="Self-hosted HiDream image serving.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the API, the workers and webhook delivery")
    serve_parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port (default 8000)")
    serve_parser.add_argument("--weights", help="'tiny' or a directory of HiDream weights")
    serve_parser.add_argument("--data-dir", type=Path, help="database and outputs (HIDREAM_DATA_DIR)")
    serve_parser.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve_parser.set_defaults(handler=serve)

    run_parser = commands.add_parser("run", help="generate one image and write it to a file")
    run_parser.add_argument("prompt")
    run_parser.add_argument("--out", type=Path, required=True, help="where to write the image (.png or .jpg)")
    run_parser.add_argument("--server", help="URL of a running server (default: start one in this process)")
    run_parser.add_argument("--endpoint", default="fal-ai/hidream-i1-full", help="fal app id")
    run_parser.add_argument("--seed", type=int)
    run_parser.add_argument("--steps", type=int, help="num_inference_steps")
    run_parser.add_argument("--key", help="API key for --server")
    run_parser.add_argument("--weights", help="weights for the in-process server ('tiny' or a directory)")
    run_parser.add_argument("--data-dir", type=Path, help="data dir for the in-process server")
    run_parser.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        code = 130
    except json.JSONDecodeError as exc:
        print(f"error: the server answered something that is not JSON: {exc}", file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
