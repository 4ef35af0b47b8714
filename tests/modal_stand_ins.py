"""In-process stand-ins for the Modal pieces that need Modal's servers: Dict, Volume commit/reload,
spawn and FunctionCall. Everything else in the Modal column runs as it does in production.

They keep Modal's semantics where the code depends on them: Dict values go through pickle (no
shared mutable objects) and `put(skip_if_exists=True)` is atomic; a Volume's files become visible
to another container only after the writer commits and the reader reloads.
"""

from __future__ import annotations

import itertools
import pickle
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_NO_DEFAULT = object()


class InProcessDict:
    """modal.Dict's put/get/pop/contains/items over a Python dict, values copied through pickle."""

    def __init__(self) -> None:
        self._data: dict[Any, bytes] = {}
        self._lock = threading.Lock()
        self.puts = 0

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            raw = self._data.get(key)
        return default if raw is None else pickle.loads(raw)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        raw = pickle.dumps(value)
        with self._lock:
            self.puts += 1
            if skip_if_exists and key in self._data:
                return False
            self._data[key] = raw
            return True

    def pop(self, key: Any, default: Any = _NO_DEFAULT) -> Any:
        with self._lock:
            raw = self._data.pop(key, None)
        if raw is None:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        return pickle.loads(raw)

    def contains(self, key: Any) -> bool:
        with self._lock:
            return key in self._data

    def items(self) -> Iterator[tuple[Any, Any]]:
        with self._lock:
            snapshot = list(self._data.items())
        return iter([(key, pickle.loads(raw)) for key, raw in snapshot])

    def __len__(self) -> int:
        return len(self._data)


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
    open_files: Callable[[], int] = lambda: 0

    def commit(self) -> None:
        self.commits += 1
        shutil.copytree(self.path, self.server.committed, dirs_exist_ok=True)

    def reload(self) -> None:
        if self.open_files():
            raise RuntimeError("there are open files preventing the operation")  # as Modal's reload does
        self.reloads += 1
        shutil.copytree(self.server.committed, self.path, dirs_exist_ok=True)


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
        self.cancelled = True
        self.terminate_containers = terminate_containers

    def get(self, timeout: float | None = None) -> Any:
        if self.outcome is None:
            raise TimeoutError()
        raise self.outcome


@dataclass
class Spawner:
    """Records `spawn` calls; the test decides when (and how often) each one runs."""

    calls: dict[str, StandInCall] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def spawn(self, function: str, *args: Any) -> StandInCall:
        call = StandInCall(f"fc-{next(self._ids):04d}", function, args)
        self.calls[call.object_id] = call
        return call

    def from_id(self, call_id: str) -> StandInCall:
        return self.calls[call_id]

    def of(self, function: str) -> list[StandInCall]:
        return [call for call in self.calls.values() if call.function == function]


TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example key
DICT_ROLES = ("jobs", "active", "listing", "deliveries", "due", "runtime")


class StandInModal:
    """Settings and handles for one test deployment: Dicts shared by every container, one Volume
    that each container mounts on its own, and spawns that are recorded for the test to run."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.dicts = {role: InProcessDict() for role in DICT_ROLES}
        self.outputs = VolumeServer(tmp_path / "outputs-volume")
        self.spawner = Spawner()
        self.mounts: list[VolumeMount] = []
        self._settings = {
            "data_dir": tmp_path / "data",
            "webhook_secret": TEST_SECRET,
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
        """The handles of a new container (each gets its own view of the Volume)."""
        from hidream_service.modal_backend.deployment import ModalHandles

        mount = self.outputs.mount()
        self.mounts.append(mount)
        return ModalHandles(
            **self.dicts,
            outputs=mount,
            outputs_dir=mount.path,
            dispatch=lambda endpoint, job_id: self.spawner.spawn(endpoint.family.name, job_id),
            call_from_id=self.spawner.from_id,
            send_webhooks=lambda: self.spawner.spawn("send_webhooks"),
        )

    def deployment(self) -> Any:
        from hidream_service.modal_backend.deployment import ModalDeployment

        return ModalDeployment(self.settings(), self.handles())


#: `.local()` of a function with Volumes warns that they are not mounted: here the stand-in mounts them.
VOLUMES_ARE_STAND_INS = pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")
