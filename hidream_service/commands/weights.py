"""`hidream weights download MODEL --to DIR` fills a weights directory at locked revisions;
`hidream weights verify DIR` hashes it against its lock file (docs/weights.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hidream_service.commands.common import UsageError
from hidream_service.inference.download import HubClientMissing, MissingToken, RevisionPinError, download_model
from hidream_service.inference.lock import LOCK_FILE, read_lock
from hidream_service.inference.manifest import verify_weights
from hidream_service.inference.sources import WeightSource
from hidream_service.inference.weights import WeightsError
from hidream_service.models.registry import ALL, DEFAULT_REGISTRY

TOKEN_VARIABLE = "HF_TOKEN"


def parse_pin(text: str) -> tuple[str, str]:
    """`--revision owner/name=SHA` -> (owner/name, SHA)."""
    repo, separator, revision = text.partition("=")
    if not separator or not repo or not revision:
        raise UsageError(f"--revision takes REPO=SHA, e.g. HiDream-ai/HiDream-I1-Full=<40-hex commit>, not {text!r}")
    return repo, revision


def _sources(model: str) -> tuple[WeightSource, ...]:
    try:
        return DEFAULT_REGISTRY.sources_for(model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _log_progress() -> None:
    """Our steps on stderr, beside the hub's own progress bars."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hidream_service").setLevel(logging.INFO)


def download(args: argparse.Namespace) -> int:
    sources = _sources(args.model)
    pins = dict(parse_pin(text) for text in args.revision)
    _log_progress()
    try:
        locked = download_model(sources, args.to, token=args.token or os.environ.get(TOKEN_VARIABLE), revisions=pins)
    except (HubClientMissing, MissingToken, RevisionPinError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for entry in locked:
        print(entry.describe())
    print(f"locked in {args.to / LOCK_FILE}")
    return 0


def verify(args: argparse.Namespace) -> int:
    _log_progress()
    sources = None if args.model is None else _sources(args.model)
    problems = verify_weights(args.weights_dir, sources, hash_files=True)
    if problems:
        print(f"{len(problems)} problem(s) in {args.weights_dir}:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    locked = read_lock(args.weights_dir)
    checked = locked.values() if sources is None else [locked[source.repo] for source in sources]
    for entry in checked:
        print(f"ok  {entry.describe()}")
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "weights",
        help="download real weights at locked revisions, or verify a weights directory",
        description=f"Real weights and their lock file ({LOCK_FILE}, at the weights directory's root).",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    models = ", ".join([*DEFAULT_REGISTRY.downloads(), ALL])

    download_parser = actions.add_parser(
        "download",
        help="download a model's repositories and lock their revisions",
        description="Download a model's repositories into DIR (the docs/weights.md layout), each at the commit "
        "pinned in code, by --revision or in the lock file, else at its current commit, which is then locked. "
        "Needs huggingface_hub (the download extra); progress is the hub's own bars.",
    )
    download_parser.add_argument("model", metavar="MODEL", help=f"one of: {models}")
    download_parser.add_argument("--to", type=Path, required=True, metavar="DIR", help="the weights directory")
    download_parser.add_argument(
        "--token", help=f"Hugging Face token (${TOKEN_VARIABLE}); meta-llama/Llama-3.1-8B-Instruct is gated"
    )
    download_parser.add_argument(
        "--revision",
        action="append",
        default=[],
        metavar="REPO=SHA",
        help="download REPO at this commit and lock it (repeatable)",
    )
    download_parser.set_defaults(handler=download)

    verify_parser = actions.add_parser(
        "verify",
        help="hash every file against the lock file",
        description=f"Hash every file under DIR against {LOCK_FILE}; exit 1 with the list of problems.",
    )
    verify_parser.add_argument("weights_dir", type=Path, metavar="DIR", help="the weights directory")
    verify_parser.add_argument(
        "--model", help=f"only this model's repositories (default: all that are locked): {models}"
    )
    verify_parser.set_defaults(handler=verify)
