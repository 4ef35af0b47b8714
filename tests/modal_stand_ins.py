"""In-process stand-ins for the Modal pieces that need Modal's servers: Volume commit, reload and
read_file, spawn and FunctionCall. Everything else in the Modal column runs as it does in
production, on a real Postgres.

They keep Modal's semantics where the code depends on them: a Volume's files become visible to
another container only after the writer commits and the reader reloads (or reads the one file
from the server); `latency` makes every stand-in call take as long as a round trip to Modal.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

READ_CHUNK_BYTES = 1 << 16


class VolumeServer:
    """The committed contents of one Volume, shared by the containers that mount it."""

    def __init__(self, root: Path) -> None:
        self.committed = root / "committed"
        self.committed.mkdir(parents=True)
        self._mounts = itertools.count()
        self.root = root

    def mount(self) -> VolumeMount:
        path = self.root / f"container-{next(self._mounts)}"
        shutil.copytree(self.committed, path)
        return VolumeMount(self, path)


@dataclass
class VolumeMount:
    """One container's view of a Volume: `commit()` publishes its files, `reload()` takes others'."""

    server: VolumeServer
    path: Path
    commits: int = 0
    reloads: int = 0
    files_read: int = 0
    latency: float = 0.0

    def __post_init__(self) -> None:
        self.seen = _files(self.path)  # what this view held when it last synced: its changes since count

    def commit(self) -> None:
        """Publish what this view changed since it last synced: files written, files removed. Files
        others changed are left alone (a file another container removed stays removed)."""
        round_trip("Volume.commit", self.latency)
        self.commits += 1
        now = _files(self.path)
        for removed in self.seen.keys() - now.keys():
            (self.server.committed / removed).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a directory it emptied goes too
                (self.server.committed / removed).parent.rmdir()
        for written in [name for name, version in now.items() if self.seen.get(name) != version]:
            target = self.server.committed / written
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.path / written, target)
        self.seen = now

    def reload(self) -> None:
        round_trip("Volume.reload", self.latency)
        self.reloads += 1
        shutil.rmtree(self.path)
        shutil.copytree(self.server.committed, self.path)
        self.seen = _files(self.path)

    def read_file(self, path: str) -> Iterator[bytes]:
        """One committed file from the server, not through this container's view."""
        round_trip("Volume.read_file", self.latency)
        self.files_read += 1
        source = self.server.committed / path
        if not source.is_file():
            raise FileNotFoundError(path)
        data = source.read_bytes()
        for start in range(0, max(len(data), 1), READ_CHUNK_BYTES):  # in chunks, as Modal sends it
            yield data[start : start + READ_CHUNK_BYTES]

    def listdir(self, path: str) -> list[str]:
        """What the Volume's server holds at `path`: that file, or a directory's entries."""
        round_trip("Volume.listdir", self.latency)
        found = self.server.committed / path
        if found.is_file():
            return [path]
        if found.is_dir():
            return sorted(entry.name for entry in found.iterdir())
        raise FileNotFoundError(path)  # Modal raises its NotFoundError


#: Stand-in calls made on a thread that runs an event loop: each one would stall that loop.
CALLS_ON_AN_EVENT_LOOP: list[str] = []


def round_trip(name: str, latency: float) -> None:
    """Take as long as a call to Modal's servers; note the call if it holds up an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        CALLS_ON_AN_EVENT_LOOP.append(name)
    time.sleep(latency)


class InputCancelled(Exception):
    """What a cancelled call's `get` raises."""


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Each file under `root` and its version (modification time and size)."""
    return {
        path.relative_to(root).as_posix(): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in root.rglob("*")
        if path.is_file()
    }


@dataclass
class StandInCall:
    """A spawned call: its id, and what was done to it."""

    object_id: str
    function: str
    args: tuple[Any, ...]
    cancelled: bool = False
    terminate_containers: bool = False
    outcome: BaseException | None = None  # what `get(timeout=0)` raises; None while it runs

    def cancel(self, terminate_containers: bool = False) -> None:
        round_trip("FunctionCall.cancel", 0.0)
        self.cancelled = True
        self.outcome = InputCancelled("cancelled")
        self.terminate_containers = terminate_containers

    def get(self, timeout: float | None = None) -> Any:
        round_trip("FunctionCall.get", 0.0)
        if self.outcome is None:
            raise TimeoutError()
        raise self.outcome


@dataclass
class Spawner:
    """Records `spawn` calls; the test decides when (and how often) each one runs."""

    calls: dict[str, StandInCall] = field(default_factory=dict)
    latency: float = 0.0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def spawn(self, function: str, *args: Any) -> StandInCall:
        round_trip("Function.spawn", self.latency)
        call = StandInCall(f"fc-{next(self._ids):04d}", function, args)
        self.calls[call.object_id] = call
        return call

    def from_id(self, call_id: str) -> StandInCall:
        return self.calls[call_id]

    def of(self, function: str) -> list[StandInCall]:
        return [call for call in self.calls.values() if call.function == function]


TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example key


class StandInModal:
    """Settings and handles for one test deployment: one Postgres database and one Volume shared by
    every container (each mounts its own view of the Volume), and spawns recorded for the test to run."""

    def __init__(self, tmp_path: Path, database_url: str, *, latency: float = 0.0, **settings: Any) -> None:
        self.outputs = VolumeServer(tmp_path / "outputs-volume")
        self.loras = VolumeServer(tmp_path / "loras-volume")
        self.lora_mounts: list[VolumeMount] = []
        self.spawner = Spawner(latency=latency)
        self.mounts: list[VolumeMount] = []
        self.latency = latency
        self._settings = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "allow_private_urls": True,  # the test's webhook receiver is on loopback
            "api_keys": [],
            "lease_seconds": 5.0,
            "heartbeat_seconds": 0.05,
            "webhook_retry_schedule": [0.0, 0.2, 0.4],
            **settings,
        }

    def settings(self) -> Any:
        from hidream_service.config import Settings

        return Settings(**self._settings)

    def handles(self) -> Any:
        """The handles of a new container (each gets its own view of each Volume)."""
        from hidream_service.modal_backend.deployment import ModalHandles

        mount = self.outputs.mount()
        mount.latency = self.latency
        self.mounts.append(mount)
        loras = self.loras.mount()
        self.lora_mounts.append(loras)
        return ModalHandles(
            outputs_dir=mount.path,
            outputs=mount,
            dispatch=lambda endpoint, job_id: self.spawner.spawn(endpoint.family.name, job_id),
            call_from_id=self.spawner.from_id,
            send_webhooks=lambda: self.spawner.spawn("send_webhooks"),
            loras_dir=loras.path,
            loras=loras,
        )

    def deployment(self) -> Any:
        from hidream_service.modal_backend.deployment import ModalDeployment

        return ModalDeployment(self.settings(), self.handles())


#: `.local()` of a function with Volumes warns that they are not mounted: here the stand-in mounts them.
VOLUMES_ARE_STAND_INS = pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")
