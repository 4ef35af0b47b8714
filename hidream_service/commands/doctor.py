"""`hidream doctor`: is this machine ready to serve? Each check says what it found and, when
something is wrong, what to do about it.

Checks read and never change anything: the data dir is probed with a temporary file, the database
is opened read-only, and a running server is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import fcntl
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hidream_service.commands.common import settings_from
from hidream_service.config import LOOPBACK_HOSTS, Settings
from hidream_service.inference.memory_modes import (
    MemoryMode,
    needed_gib,
    peak_weights_gib,
    recommended_mode,
)
from hidream_service.inference.weights import WeightsError, WeightsLayout, resolve_weights
from hidream_service.models.registry import DEFAULT_REGISTRY, Registry
from hidream_service.signing_keys import KEYS_FILE
from webhooks.signing import secret_bytes

GIB = 1 << 30
MIN_FREE_BYTES = 1 * GIB  # below this, outputs and SQLite writes soon fail
LOW_FREE_BYTES = 10 * GIB  # real weights alone are tens of GB
MIN_SECRET_BYTES = 16


class Level(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    message: str
    fix: str | None = None


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_data_dir(settings: Settings) -> Check:
    data_dir = settings.data_dir
    if not data_dir.exists():
        parent = _nearest_existing(data_dir)
        if parent.is_dir() and os.access(parent, os.W_OK):
            return Check("data dir", Level.OK, f"{data_dir} does not exist yet; `hidream serve` creates it")
        return Check(
            "data dir",
            Level.FAIL,
            f"{data_dir} does not exist and cannot be created under {parent}",
            f"create it (mkdir -p {data_dir}) as the user who runs the server, or set HIDREAM_DATA_DIR",
        )
    if not data_dir.is_dir():
        return Check("data dir", Level.FAIL, f"{data_dir} is not a directory", "set HIDREAM_DATA_DIR to a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "data dir",
            Level.FAIL,
            f"cannot write in {data_dir}: {exc.strerror}",
            f"give the server's user write access (chown/chmod {data_dir}), or set HIDREAM_DATA_DIR",
        )
    running = " (a server is running on it)" if _server_running(data_dir) else ""
    return Check("data dir", Level.OK, f"{data_dir} is writable{running}")


def _server_running(data_dir: Path) -> bool:
    lock = data_dir / "server.lock"
    if not lock.is_file():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def check_database(settings: Settings) -> Check:
    if settings.shared_database:
        return _check_postgres(settings)
    path = settings.database_path
    if not path.exists():
        return Check("database", Level.OK, f"{path.name} not created yet; the first `hidream serve` makes it")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
            (integrity,) = conn.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            counts: dict[str, int] = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            failed_webhooks = 0
            if "webhook_deliveries" in tables:
                (failed_webhooks,) = conn.execute(
                    "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'failed'"
                ).fetchone()
    except sqlite3.Error as exc:
        return Check(
            "database",
            Level.FAIL,
            f"{path} cannot be read as SQLite: {exc}",
            f"stop the server, move {path.name} aside (its jobs are lost) and start again; it makes a new one",
        )
    if integrity != "ok":
        return Check(
            "database",
            Level.FAIL,
            f"{path} is damaged: {integrity}",
            f"stop the server and run `sqlite3 {path} .recover` into a new file, or move it aside",
        )
    return _contents(f"{path.name}: intact", counts, failed_webhooks)


def _contents(what: str, counts: dict[str, int], failed_webhooks: int) -> Check:
    """A readable database's jobs, and a warning for webhooks that failed every attempt."""
    summary = (
        f"{what}, {sum(counts.values())} jobs ({counts.get('IN_QUEUE', 0)} queued,"
        f" {counts.get('IN_PROGRESS', 0)} running)"
    )
    if failed_webhooks:
        return Check(
            "database",
            Level.WARN,
            f"{summary}; {failed_webhooks} webhook(s) failed every attempt",
            "see them with `hidream jobs list`, send one again with `hidream jobs replay-webhook REQUEST_ID`",
        )
    return Check("database", Level.OK, summary)


def _check_postgres(settings: Settings) -> Check:
    import psycopg
    from sqlalchemy.engine import make_url

    from hidream_service.db.engine import libpq_url
    from hidream_service.db.schema import LATEST

    assert settings.database_url is not None
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    try:
        with psycopg.connect(libpq_url(settings.database_url), connect_timeout=5, autocommit=True) as conn:
            tables = {
                row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            }
            if "schema_migrations" not in tables:
                return Check("database", Level.OK, f"{shown}: reachable and empty; the first `hidream serve` fills it")
            version = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            counts: dict[str, int] = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            failed = conn.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'failed'").fetchone()
    except psycopg.Error as exc:
        return Check(
            "database",
            Level.FAIL,
            f"cannot use {shown}: {str(exc).strip()}",
            "check HIDREAM_DATABASE_URL (host, port, user, password, database) and that Postgres accepts this machine",
        )
    at = version[0] if version else 0
    if at > LATEST:
        return Check("database", Level.FAIL, f"{shown}: schema {at}, made by a newer release", "run the newer release")
    return _contents(f"{shown}: schema {at}", counts, failed[0] if failed else 0)


def check_weights(settings: Settings, registry: Registry = DEFAULT_REGISTRY) -> Check:
    fix_layout = "download the missing files again (see docs/weights.md for the layout), or pass --weights tiny"
    if settings.weights is None:
        return Check(
            "weights",
            Level.WARN,
            "no weights set: only hidream/noop is served",
            "pass --weights DIR (real weights, docs/weights.md) or --weights tiny, or set HIDREAM_WEIGHTS",
        )
    try:
        layout = resolve_weights(settings.weights, settings.data_dir)
    except WeightsError as exc:
        return Check("weights", Level.FAIL, str(exc), "set HIDREAM_WEIGHTS (or --weights) to the weights directory")
    assert layout is not None
    # Tiny weights are checked as they lie, like a real directory: only what was built so far.
    models = sorted(registry.available_models(WeightsLayout(layout.root)))
    if layout.tiny and not models:
        return Check("weights", Level.OK, "tiny: not built yet; the first job builds them offline (a minute or so)")
    if not models:
        expected = ", ".join(sorted({s.directory for group in registry.downloads().values() for s in group}))
        return Check(
            "weights",
            Level.FAIL,
            f"{layout.root} holds no complete model (expected some of {expected}, as docs/weights.md lays out)",
            fix_layout,
        )
    for model in models:
        try:
            registry.check_weights(layout, model)
        except WeightsError as exc:
            return Check("weights", Level.FAIL, str(exc), fix_layout)
    where = "tiny" if layout.tiny else str(layout.root)
    return Check("weights", Level.OK, f"{where}: {', '.join(models)} complete")


def check_preload(settings: Settings, registry: Registry = DEFAULT_REGISTRY) -> Check:
    unknown = [endpoint for endpoint in settings.preload if endpoint not in registry.endpoints]
    if unknown:
        return Check(
            "preload",
            Level.FAIL,
            f"HIDREAM_PRELOAD names unknown endpoint(s): {', '.join(unknown)}; `hidream serve` refuses to start",
            f"use endpoint ids from GET /models: {', '.join(registry.endpoints)}",
        )
    if not settings.preload:
        return Check("preload", Level.OK, "none: each model loads at its first job")
    return Check("preload", Level.OK, f"workers load {', '.join(settings.preload)} as they start")


def check_webhook_secret(settings: Settings) -> Check:
    if settings.webhook_secret:
        try:
            key = secret_bytes(settings.webhook_secret)
        except ValueError as exc:
            return Check(
                "webhook secret",
                Level.FAIL,
                f"HIDREAM_WEBHOOK_SECRET: {exc}",
                "set it to whsec_ followed by base64 of random bytes, or unset it to have one generated",
            )
        if len(key) < MIN_SECRET_BYTES:
            return Check(
                "webhook secret",
                Level.WARN,
                f"HIDREAM_WEBHOOK_SECRET has only {len(key)} bytes of key",
                f"use at least {MIN_SECRET_BYTES} random bytes (24 or 32 are usual)",
            )
        return Check("webhook secret", Level.OK, "pinned by HIDREAM_WEBHOOK_SECRET")
    if settings.shared_database:
        return Check("webhook secret", Level.OK, "kept in the database, shared by every node")
    keys_file = settings.data_dir / KEYS_FILE
    if not keys_file.exists():
        return Check("webhook secret", Level.OK, "none yet; the first `hidream serve` generates one")
    try:
        secret_bytes(json.loads(keys_file.read_text())["standard"][0]["secret"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        return Check(
            "webhook secret",
            Level.FAIL,
            f"{keys_file} is damaged ({type(exc).__name__}: {exc})",
            f"move {keys_file} aside: a new secret is generated, and receivers must be given it",
        )
    if keys_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Check(
            "webhook secret",
            Level.WARN,
            f"{keys_file} can be read by other users",
            f"chmod 600 {keys_file}",
        )
    return Check("webhook secret", Level.OK, f"kept in {keys_file} (readable by its owner only)")


def check_disk(settings: Settings, free_bytes: Callable[[Path], int] | None = None) -> Check:
    where = _nearest_existing(settings.data_dir)
    free = (free_bytes or (lambda path: shutil.disk_usage(path).free))(where)
    message = f"{free / GIB:.1f} GiB free for {settings.data_dir}"
    if free < MIN_FREE_BYTES:
        return Check("free disk", Level.FAIL, message, "free some space, or move HIDREAM_DATA_DIR to a larger disk")
    if free < LOW_FREE_BYTES:
        return Check("free disk", Level.WARN, message, "outputs and weights grow: keep 10 GiB or more free")
    return Check("free disk", Level.OK, message)


def visible_gpu_memory() -> list[tuple[str, int]]:
    """(name, bytes of memory) of each CUDA device torch can see. Raises ImportError without torch."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        (torch.cuda.get_device_name(index), torch.cuda.get_device_properties(index).total_memory)
        for index in range(torch.cuda.device_count())
    ]


def visible_gpus() -> list[str]:
    """CUDA devices torch can see, by name and memory. Raises ImportError without torch."""
    return [f"{name} ({memory / GIB:.0f} GiB)" for name, memory in visible_gpu_memory()]


def check_gpu(settings: Settings, cuda: Callable[[], list[str]] = visible_gpus) -> Check:
    try:
        devices = cuda()
    except ImportError:
        return Check(
            "gpu",
            Level.WARN,
            "torch is not installed: workers can run only hidream/noop",
            "install the inference extra (pip install 'hidream-service[inference]')",
        )
    if devices:
        used = " (not used: HIDREAM_DEVICE=cpu)" if settings.device == "cpu" else ""
        return Check("gpu", Level.OK, f"{len(devices)} visible: {', '.join(devices)}{used}")
    if settings.device == "cuda":
        return Check(
            "gpu",
            Level.FAIL,
            "HIDREAM_DEVICE=cuda, but no CUDA GPU is visible",
            "check nvidia-smi and CUDA_VISIBLE_DEVICES, or set HIDREAM_DEVICE=auto to run on the CPU",
        )
    return Check(
        "gpu",
        Level.WARN,
        "no GPU: CPU only (fine for noop and tiny weights; real HiDream-I1 wants a large GPU)",
        None,
    )


def check_memory_mode(settings: Settings, gpus: Callable[[], list[tuple[str, int]]] = visible_gpu_memory) -> Check:
    """Whether HIDREAM_MEMORY_MODE fits the smallest visible GPU (each worker may get any of them),
    and which mode keeps the most on it, by the computed figures of memory_modes.py."""
    mode = MemoryMode(settings.memory_mode)
    try:
        devices = [] if settings.device == "cpu" else gpus()
    except ImportError:
        return Check("memory mode", Level.OK, f"{mode} (torch is not installed: no GPU to size it for)")
    if not devices:
        return Check("memory mode", Level.OK, f"{mode} (no GPU in use: models run in CPU memory)")
    name, memory = min(devices, key=lambda device: device[1])
    size = memory / GIB
    recommended = recommended_mode(size)
    fix = f"set HIDREAM_MEMORY_MODE={recommended}" if recommended else None
    figures = f"{mode} needs about {needed_gib(mode):.0f} GiB (computed), {name} has {size:.0f} GiB"
    if recommended is None:
        smallest = needed_gib(MemoryMode.BLOCK_OFFLOAD)
        return Check(
            "memory mode",
            Level.WARN,
            f"{name} has {size:.0f} GiB: HiDream-I1 and E1 need about {smallest:.0f} GiB even in "
            f"{MemoryMode.BLOCK_OFFLOAD} (O1 needs about 17 GiB and more for 2K images)",
            "use a GPU with 24 GB or more",
        )
    if peak_weights_gib(mode) > size:
        return Check("memory mode", Level.FAIL, f"{figures}: its weights alone do not fit", fix)
    if needed_gib(mode) > size:
        return Check("memory mode", Level.WARN, f"{figures}: the first large image may run out of memory", fix)
    if mode is not recommended:
        return Check("memory mode", Level.OK, f"{figures}; {recommended} fits too and moves less (faster)")
    return Check("memory mode", Level.OK, f"{figures}: the mode that keeps the most on it")


def check_access(settings: Settings) -> Check:
    if settings.api_keys:
        return Check("api keys", Level.OK, f"{len(settings.api_keys)} configured: every request needs one")
    if settings.host in LOOPBACK_HOSTS:
        return Check("api keys", Level.OK, f"none: the API is open, on loopback ({settings.host}) only")
    return Check(
        "api keys",
        Level.FAIL,
        f"none, and the server binds {settings.host}: anyone who can reach it can submit jobs",
        "set HIDREAM_API_KEYS=key1,key2, or bind 127.0.0.1",
    )


def run_checks(settings: Settings) -> list[Check]:
    checks = [
        check_data_dir,
        check_database,
        check_weights,
        check_preload,
        check_webhook_secret,
        check_disk,
        check_gpu,
        check_memory_mode,
        check_access,
    ]
    return [check(settings) for check in checks]


def report(checks: list[Check]) -> str:
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.level.value:<4}  {check.name:<{width}}  {check.message}")
        if check.fix and check.level is not Level.OK:
            lines.append(f"{'':<4}  {'':<{width}}  → {check.fix}")
    failures = sum(check.level is Level.FAIL for check in checks)
    warnings = sum(check.level is Level.WARN for check in checks)
    lines.append("")
    lines.append(
        f"{failures} problem(s) to fix, {warnings} warning(s)"
        if failures
        else f"ready to serve ({warnings} warning(s))"
    )
    return "\n".join(lines)


def doctor(args: argparse.Namespace) -> int:
    checks = run_checks(settings_from(args))
    if args.json:
        print(json.dumps([dataclasses.asdict(check) for check in checks], indent=2))
    else:
        print(report(checks))
    return 1 if any(check.level is Level.FAIL for check in checks) else 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check weights, data dir, database, webhook secret, disk, GPU and its memory mode",
        description="Check that this machine can serve, with the same settings `hidream serve` would use.",
    )
    parser.add_argument("--weights", help="'tiny' or a directory of HiDream weights (HIDREAM_WEIGHTS)")
    parser.add_argument("--data-dir", type=Path, help="HIDREAM_DATA_DIR")
    parser.add_argument("--host", help="the address the server would bind (HIDREAM_HOST)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(handler=doctor)
