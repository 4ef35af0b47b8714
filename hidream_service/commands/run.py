"""`hidream run`: one request from the terminal, against a running server or one started in-process.

Any endpoint of the catalogue; `--image` fills the endpoint's image input (a local file is uploaded
first); a progress bar follows the request's event stream; Ctrl-C cancels the job; `--json` prints
the result for scripts.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hidream_service.client import ServiceClient, ServiceError
from hidream_service.commands.common import UsageError, add_connection_options, settings_from
from hidream_service.config import Settings

BAR_WIDTH = 30
ENDED = ("succeeded", "failed", "cancelled")
STEP_FIELDS = ("num_inference_steps", "num_steps")  # whichever the endpoint has takes --steps
OUTPUT_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
URL_SCHEMES = ("http://", "https://", "data:")
STREAM_RETRIES = 20
POLL_SECONDS = 0.5
CANCEL_WAIT_SECONDS = 10.0
EXIT_CANCELLED = 130


class InProcessServer:
    """The whole server on a free loopback port in this process, for `hidream run` without --server."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from hidream_service.server import create_app

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


def progress_line(summary: dict[str, Any]) -> str:
    """One line for a request's summary: queue place, a bar from its progress, or its state."""
    if summary["status"] == "IN_QUEUE":
        position = summary.get("queue_position") or 0
        return f"queued ({position} ahead)" if position else "queued (next)"
    progress = summary.get("progress")
    if progress and progress["total"] > 0:
        done, total = progress["step"], progress["total"]
        filled = BAR_WIDTH * min(done, total) // total
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] step {done}/{total}"
    return str(summary["status"]).lower().replace("_", " ")


def parse_assignment(text: str) -> tuple[str, Any]:
    """`--set name=value`: the value as JSON when it is JSON (numbers, booleans, objects), else a string."""
    name, equals, raw = text.partition("=")
    if not equals or not name.strip():
        raise UsageError(f"--set wants NAME=VALUE, not {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name.strip(), value


def find_model(models: list[dict[str, Any]], endpoint: str) -> dict[str, Any]:
    for model in models:
        if model["id"] == endpoint:
            return model
    served = ", ".join(model["id"] for model in models)
    raise UsageError(f"this server does not serve {endpoint!r}; it serves: {served}")


def prompt_field(model: dict[str, Any]) -> str:
    """Where the positional text goes: `prompt`, else the first required text input that is not an
    image."""
    schema = model["input_schema"]
    properties = schema.get("properties", {})
    if "prompt" in properties:
        return "prompt"
    images = {field["name"] for field in model.get("image_fields") or []}
    for name in schema.get("required", []):
        if name not in images and properties.get(name, {}).get("type") == "string":
            return str(name)
    return "prompt"


def build_arguments(args: argparse.Namespace, model: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's input from the command line, by the names its schema uses."""
    properties = model["input_schema"].get("properties", {})
    arguments: dict[str, Any] = {}
    if args.prompt is not None:
        arguments[prompt_field(model)] = args.prompt
    if args.seed is not None:
        arguments["seed"] = args.seed
    if args.num_images is not None:
        arguments["num_images"] = args.num_images
    if args.steps is not None:
        field = next((name for name in STEP_FIELDS if name in properties), STEP_FIELDS[0])
        arguments[field] = args.steps
    if args.out is not None and "output_format" in properties:
        output_format = OUTPUT_FORMATS.get(args.out.suffix.lower())
        if output_format is None:
            raise UsageError(f"--out must end in one of {', '.join(OUTPUT_FORMATS)}")
        arguments["output_format"] = output_format
    for assignment in args.set or []:
        name, value = parse_assignment(assignment)
        arguments[name] = value
    return arguments


def image_arguments(client: ServiceClient, model: dict[str, Any], images: list[str]) -> dict[str, Any]:
    """Put --image values (URLs, or local files uploaded first) into the endpoint's image input."""
    fields = model.get("image_fields") or []
    if not fields:
        raise UsageError(f"{model['id']} takes no image input; drop --image or pick an editing endpoint")
    field = next((candidate for candidate in fields if candidate["required"]), fields[0])
    if len(images) > 1 and not field["multiple"]:
        raise UsageError(f"{model['id']} takes one image ({field['name']}), not {len(images)}")
    urls = []
    for image in images:
        if image.startswith(URL_SCHEMES):
            urls.append(image)
            continue
        path = Path(image).expanduser()
        if not path.is_file():
            raise UsageError(f"--image {image}: no such file (give a path or an http(s) URL)")
        urls.append(client.upload(path))
        print(f"uploaded {path.name}", file=sys.stderr)
    return {field["name"]: urls if field["multiple"] else urls[0]}


def _show(line: str) -> None:
    print(f"\r{line:<60}", end="", file=sys.stderr, flush=True)


def follow(client: ServiceClient, handle: dict[str, Any]) -> dict[str, Any]:
    """Show the request's progress until it ends; returns its last summary."""
    request_id = handle["request_id"]
    for _ in range(STREAM_RETRIES):
        try:
            for summary in client.request_events(request_id):
                if _shown_until_ended(summary):
                    return summary
        except ServiceError as exc:
            if exc.status == 404:
                return poll(client, request_id)  # a server older than the stream (or a request gone: it says so)
            if exc.status is not None:
                raise
        time.sleep(0.5)  # the stream dropped before the end: follow it again
    raise ServiceError(None, "lost the request's event stream; see it with `hidream jobs show`")


def poll(client: ServiceClient, request_id: str) -> dict[str, Any]:
    """Follow a request by reading its summary twice a second."""
    while True:
        summary = client.request(request_id)
        if _shown_until_ended(summary):
            return summary
        time.sleep(POLL_SECONDS)


def _shown_until_ended(summary: dict[str, Any]) -> bool:
    _show(progress_line(summary))
    if summary["outcome"] in ENDED:
        print(file=sys.stderr)
        return True
    return False


def cancel(client: ServiceClient, handle: dict[str, Any]) -> int:
    """Ctrl-C: cancel the job and wait (briefly) until the server says it stopped."""
    print("\ncancelling…", file=sys.stderr)
    try:
        client.cancel(handle["cancel_url"])
    except ServiceError as exc:
        print(f"could not cancel {handle['request_id']}: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while time.monotonic() < deadline:
        if client.status(handle["status_url"])["status"] == "COMPLETED":
            print(f"cancelled {handle['request_id']}", file=sys.stderr)
            return EXIT_CANCELLED
        time.sleep(0.2)
    print(f"cancel requested; {handle['request_id']} stops at its next step", file=sys.stderr)
    return EXIT_CANCELLED


def output_paths(out: Path, count: int) -> list[Path]:
    """`fox.png` for one image; `fox-1.png`, `fox-2.png`, … for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{number}{out.suffix}") for number in range(1, count + 1)]


def generate(client: ServiceClient, args: argparse.Namespace) -> int:
    model = find_model(client.catalogue(), args.endpoint)
    arguments = build_arguments(args, model)
    if args.image:
        arguments.update(image_arguments(client, model, args.image))
    handle = client.submit(model["id"], arguments, webhook=args.webhook)
    print(f"request {handle['request_id']}", file=sys.stderr)
    try:
        final = follow(client, handle)
    except KeyboardInterrupt:
        return cancel(client, handle)
    report: dict[str, Any] = {"request_id": handle["request_id"], "endpoint": model["id"]}
    if final.get("error"):
        report.update(error=final["error"], error_type=final.get("error_type"))
        if args.json:
            print(json.dumps(report, indent=2))
        print(f"error: {final.get('error_type')}: {final['error']}", file=sys.stderr)
        return 1
    result = final["result"]  # the last event carries it
    images = result.get("images", [])
    written = []
    if args.out is not None:
        for image, path in zip(images, output_paths(args.out, len(images)), strict=True):
            path.write_bytes(client.download(image["url"]))
            written.append(str(path))
            print(f"wrote {path} ({image['width']}x{image['height']}, seed {result.get('seed')})", file=sys.stderr)
    if args.json:
        print(json.dumps({**report, "result": result, "files": written}, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.out is None and not args.json:
        raise UsageError("pass --out PATH to write the image, or --json to print the result")
    if args.server:
        with ServiceClient(args.server, args.key) as client:
            return generate(client, args)
    settings = settings_from(args, host="127.0.0.1", port=0)
    from hidream_service.models.registry import DEFAULT_REGISTRY  # the in-process server's families

    endpoint = DEFAULT_REGISTRY.endpoints.get(args.endpoint)
    if settings.weights is None and (endpoint is None or endpoint.needs_weights):
        raise UsageError("pass --weights PATH (real weights) or --weights tiny, or --server URL")
    with InProcessServer(settings) as server, ServiceClient(server.url, args.key) as client:
        return generate(client, args)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run",
        help="make an image (or run any endpoint) and write it to a file",
        description="Queue one request, follow its progress, write its images. Ctrl-C cancels it.",
    )
    parser.add_argument(
        "prompt", nargs="?", help="the prompt, or an editing endpoint's instruction (omit where none is needed)"
    )
    parser.add_argument("--out", type=Path, help="where to write the image (.png, .jpg or .webp); several get -1, -2…")
    parser.add_argument("--json", action="store_true", help="print the request id, result and files as JSON")
    parser.add_argument("--endpoint", default="fal-ai/hidream-i1-full", help="fal app id (see GET /models)")
    parser.add_argument(
        "--image", action="append", help="an input image for editing endpoints: a file (uploaded) or URL; repeatable"
    )
    parser.add_argument("--seed", type=int, help="same seed, same image")
    parser.add_argument("--steps", type=int, help="inference steps (num_inference_steps)")
    parser.add_argument("--num-images", type=int, help="how many images (num_images)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", help="any other input; VALUE may be JSON")
    parser.add_argument("--webhook", help="also send fal's webhook to this URL when the request ends")
    add_connection_options(parser, server_default=None)
    parser.add_argument("--weights", help="weights for the in-process server ('tiny' or a directory)")
    parser.add_argument("--data-dir", type=Path, help="data dir for the in-process server")
    parser.set_defaults(handler=run)
