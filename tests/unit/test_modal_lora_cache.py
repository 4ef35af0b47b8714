"""The LoRA cache on Modal: the web container's view of the Volume stores and commits; a job container
that mounted the Volume earlier fetches the one file it lacks from the Volume's server, keeps it on
its own disk, and never reloads its view. Volume semantics come from the stand-ins."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from hidream_service.inference.lora_cache import digest_of
from hidream_service.modal_backend.storage import VolumeLoraCache
from tests.modal_stand_ins import VolumeMount, VolumeServer

BUDGET = 1000


def cache(mount: VolumeMount, local: Path, budget: int = BUDGET) -> VolumeLoraCache:
    return VolumeLoraCache(mount.path, budget, mount, local)


def test_a_file_stored_by_web_after_a_job_container_started_reaches_it_once(tmp_path: Path) -> None:
    server = VolumeServer(tmp_path / "volume")
    job_view = server.mount()  # mounted before the file exists: it cannot see it in its view
    web_view = server.mount()
    web, job = cache(web_view, tmp_path / "web-local"), cache(job_view, tmp_path / "job-local", budget=1 << 20)
    content = bytes(range(256)) * 800  # several chunks of the server's answer

    digest = web.store(content, source="https://example.com/one.safetensors")

    assert web_view.commits == 1 and web.find(digest) == web_view.path / "files" / f"{digest}.safetensors"
    found = job.find(digest)
    assert found is not None and found.read_bytes() == content
    assert found.is_relative_to(tmp_path / "job-local")  # its own disk, not the read-only view
    assert job.find(digest) == found and job_view.files_read == 1  # fetched once
    assert job_view.reloads == 0
    assert job.find(digest_of(b"never stored")) is None and job_view.files_read == 2


def test_files_the_budget_removes_leave_the_volume_too(tmp_path: Path) -> None:
    server = VolumeServer(tmp_path / "volume")
    web_view = server.mount()
    web = cache(web_view, tmp_path / "web-local")
    old = web.store(b"o" * 600)
    os.utime(web.path_of(old), (1, 1))

    new = web.store(b"n" * 600)

    assert not (server.committed / "files" / f"{old}.safetensors").exists()
    assert (server.committed / "files" / f"{new}.safetensors").read_bytes() == b"n" * 600
    late_view = server.mount()
    assert cache(late_view, tmp_path / "late-local").find(old) is None


def test_a_read_only_view_finds_its_files_without_marking_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = VolumeServer(tmp_path / "volume")
    digest = cache(server.mount(), tmp_path / "web-local").store(b"lora one")
    job_view = server.mount()
    job = cache(job_view, tmp_path / "job-local")
    utime = os.utime

    def read_only(path: Path, *args: Any, **kwargs: Any) -> None:
        if Path(path).is_relative_to(job_view.path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        utime(path, *args, **kwargs)

    monkeypatch.setattr(os, "utime", read_only)

    assert job.find(digest) == job_view.path / "files" / f"{digest}.safetensors"
    assert job_view.files_read == 0
    assert job.find(digest_of(b"never stored")) is None


def test_a_file_another_web_container_removed_is_fetched_and_stored_again(tmp_path: Path) -> None:
    server = VolumeServer(tmp_path / "volume")
    source = "https://example.com/one.safetensors"
    first = cache(server.mount(), tmp_path / "first-local")
    one = first.store(b"1" * 600, source=source)
    second = cache(server.mount(), tmp_path / "second-local")  # its view holds `one`
    assert second.digest_of_source(source) == one  # on the Volume: trusted

    os.utime(first.path_of(one), (1, 1))
    first.store(b"2" * 600)  # the first container's budget removes `one`, and commits that
    assert not (server.committed / "files" / f"{one}.safetensors").exists()

    assert second.digest_of_source(source) is None  # still in its view, gone from the Volume
    assert second.store(b"1" * 600, source=source) == one  # fetched again: the store publishes it anew
    assert (server.committed / "files" / f"{one}.safetensors").read_bytes() == b"1" * 600
    found = cache(server.mount(), tmp_path / "job-local").find(one)
    assert found is not None and found.read_bytes() == b"1" * 600
