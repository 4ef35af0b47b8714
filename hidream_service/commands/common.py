"""What the subcommands share: where the server is, the API key, Settings from flags, errors."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hidream_service.config import Settings

SERVER_VARIABLE = "HIDREAM_SERVER_URL"  # the server the client commands talk to
KEY_VARIABLE = "HIDREAM_KEY"  # the API key they send (the playground's snippets read it too)
SETTINGS_FLAGS = ("host", "port", "weights", "data_dir", "workers", "database_url", "outputs_dir")


class UsageError(Exception):
    """A command line that cannot work as given; the command exits 2 with this message."""


def add_connection_options(
    parser: argparse.ArgumentParser, *, server_default: str | None, nested: bool = False
) -> None:
    """--server and --key. `nested`: on a sub-subcommand, where a default would overwrite what was
    given before the subcommand's name (argparse applies the innermost parser's defaults last)."""
    server = os.environ.get(SERVER_VARIABLE) or server_default
    parser.add_argument(
        "--server",
        default=argparse.SUPPRESS if nested else server,
        help=f"URL of a running server (${SERVER_VARIABLE}; default {server_default or 'start one in-process'})",
    )
    key = os.environ.get(KEY_VARIABLE)
    parser.add_argument("--key", default=argparse.SUPPRESS if nested else key, help=f"API key (${KEY_VARIABLE})")


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from the environment, overridden by the flags given and by `extra`."""
    overrides = {key: value for key, value in extra.items() if value is not None}
    for name in SETTINGS_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)
