"""The `hidream` command: `serve` runs the server; `run`, `jobs`, `doctor` and `weights` are in commands/."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from hidream_service.client import ServiceError
from hidream_service.commands import doctor, jobs, run, weights
from hidream_service.commands.common import UsageError, settings_from
from hidream_service.config import SettingsError

log = logging.getLogger("hidream_service")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hidream_service.inference.weights import WeightsError
    from hidream_service.logs import configure_logging
    from hidream_service.runtime import DataDirInUse, data_dir_lock, database_problem
    from hidream_service.server import create_app
    from hidream_service.serving import uvicorn_config

    settings = settings_from(args)
    try:
        with data_dir_lock(settings):
            pass  # fail here with a clear message rather than in the middle of start-up
    except DataDirInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problem = database_problem(settings)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        app = create_app(settings)
    except WeightsError as exc:
        print(f"error: {exc} (see docs/weights.md for the layout, or pass --weights tiny)", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)
    if not settings.api_keys and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s with no API keys: anyone on the network can submit jobs", settings.host)
    uvicorn.Server(uvicorn_config(app, settings)).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hidream", description="Self-hosted HiDream image serving.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the API, the workers and webhook delivery")
    serve_parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port (default 8000)")
    serve_parser.add_argument("--weights", help="'tiny' or a directory of HiDream weights")
    serve_parser.add_argument("--data-dir", type=Path, help="database and outputs (HIDREAM_DATA_DIR)")
    serve_parser.add_argument(
        "--database-url", help="postgresql://... to share jobs with other nodes (HIDREAM_DATABASE_URL; default SQLite)"
    )
    serve_parser.add_argument(
        "--outputs-dir", type=Path, help="outputs and uploads, shared by all nodes (HIDREAM_OUTPUTS_DIR)"
    )
    serve_parser.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve_parser.set_defaults(handler=serve)

    run.add_parser(commands)
    jobs.add_parser(commands)
    doctor.add_parser(commands)
    weights.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except (UsageError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except ValidationError as exc:
        print(f"error: a setting is not valid (HIDREAM_* or a flag):\n{exc}", file=sys.stderr)
        code = EXIT_USAGE
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except json.JSONDecodeError as exc:
        print(f"error: the server answered something that is not JSON: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
