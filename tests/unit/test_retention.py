"""Retention: outputs and uploads older than the TTL are removed by one node at a time; the job rows
stay and say so, and the file's URL answers 404 saying it expired."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from hidream_service.config import Settings
from hidream_service.jobs.model import JobRequest
from hidream_service.retention import RetentionSweep
from hidream_service.server import create_app
from tests.integration.harness import serving
from tests.sql_stores import ENGINES, sql_store

HOUR = 3600.0


def backdated(directory: Path, age_seconds: float) -> Path:
    directory.mkdir(parents=True)
    (directory / "0.png").write_bytes(b"png")
    then = os.path.getmtime(directory / "0.png") - age_seconds
    os.utime(directory / "0.png", (then, then))
    return directory


@pytest.mark.parametrize("engine", ENGINES)
def test_old_files_go_recent_ones_stay_and_one_node_sweeps_at_a_time(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if engine == "postgres" else f"sqlite:///{tmp_path}/db"
    store = sql_store(url)
    root = tmp_path / "outputs"
    ids = []
    for _ in range(3):
        store.insert(job_id := f"job-{len(ids)}", JobRequest("hidream/noop", {}), "hash", 1.0)
        ids.append(job_id)
    now = os.path.getmtime(tmp_path)
    old_job, new_job, _queued = ids
    for job_id, completed_at in ((old_job, now - 2 * HOUR), (new_job, now - 0.5 * HOUR)):
        leased = store.lease_job(job_id, "w:1", 1.0, now + HOUR, holder="w")
        assert leased is not None
        store.finish(leased, expected=[leased.status], token="w:1", message=None)
        with store.db.write() as tx:  # the end times this test needs
            tx.run("UPDATE jobs SET completed_at = :t WHERE id = :id", {"t": completed_at, "id": job_id})
    old_dirs = [backdated(root / old_job, 2 * HOUR), backdated(root / "upload-old", 3 * HOUR)]
    kept_dirs = [backdated(root / new_job, 0.5 * HOUR), backdated(root / "input-recent", 0.1 * HOUR)]

    first = RetentionSweep(store, root, ttl_hours=1, holder="node-a")
    other = RetentionSweep(store, root, ttl_hours=1, holder="node-b")
    swept = first.run_once(now)
    assert other.run_once(now) is None  # node-a holds the chore
    assert swept is not None and swept.jobs == 1 and swept.directories == 2
    assert [d.exists() for d in old_dirs] == [False, False] and all(d.exists() for d in kept_dirs)
    expired = {job_id: store.get(job_id) for job_id in ids}
    assert [expired[job_id].files_expired_at for job_id in ids] == [now, None, None]  # type: ignore[union-attr]
    assert other.run_once(now + 3 * first.interval_seconds) is not None  # node-a's hold ran out
    assert RetentionSweep(store, root, ttl_hours=0, holder="node-c").run_once(now) is None  # 0: keep forever
    store.close()


def test_an_expired_file_answers_404_saying_so(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, sqlite_synchronous="NORMAL"), start_workers=False)
    with serving(app) as url:
        service = app.state.hidream.service
        job, _ = service.submit(JobRequest("hidream/noop", {}))
        lease = service.lease_next("w")
        service.complete(lease, {"images": []}, 0.1)
        outputs = tmp_path / "outputs"
        backdated(outputs / job.id, 0)
        later = time.time() + 100 * HOUR  # past the TTL, and past the hold of the server's own sweep
        assert RetentionSweep(service.store, outputs, ttl_hours=72, holder="test").run_once(later) is not None
        response = httpx.get(f"{url}/files/{job.id}/0.png")
        assert response.status_code == 404 and "expired" in response.json()["detail"]
        assert httpx.get(f"{url}/files/{job.id}/1.png").json()["detail"].startswith("file expired")
        assert httpx.get(f"{url}/files/other/0.png").json()["detail"] == "file not found"
        assert httpx.get(f"{url}/v1/requests/{job.id}").json()["files_expired_at"] is not None
