"""The Standard Webhooks secret: HIDREAM_WEBHOOK_SECRET, or one generated once and kept in the data dir."""

from __future__ import annotations

import os
from pathlib import Path

from hidream_service.config import Settings
from webhooks.signing import generate_secret, secret_bytes

SECRET_FILE = "webhook_secret"


def load_webhook_secret(settings: Settings) -> str:
    if settings.webhook_secret:
        secret_bytes(settings.webhook_secret)  # fail at start-up, not at the first webhook
        return settings.webhook_secret
    path: Path = settings.data_dir / SECRET_FILE
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = generate_secret()
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.replace(partial, path)
    return secret
