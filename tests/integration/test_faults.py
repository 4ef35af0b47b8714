"""Faults of the machine under the service: a database that fills up while a job runs, and output
files that must be on disk before the job row that names them.

The full disk is SQLite's own: a server started with FillableDatabase.env() holds its database at
the size the test sets (`PRAGMA max_page_count`, in every process; see full_disk/sitecustomize.py),
so each write that needs a new page fails with the genuine "database or disk is full".
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg.errors
import pytest

from hidream_service.db.engine import Database
from hidream_service.db.schema import migrate
from hidream_service.jobs.model import JobRequest
from hidream_service.jobs.store import SqlJobStore
from hidream_service.storage import LocalOutputStorage
from hidream_service.storage_full import is_storage_full
from tests.integration.harness import ServerProcess, WebhookReceiver, wait_until

HOOK = Path(__file__).parent / "full_disk"
#: Every copy of this prompt (the job's input, the client's echoed input, a webhook body) needs pages
#: of its own, so a full database refuses any write that carries it.
BIG_PROMPT = "p" * 10_000


class FillableDatabase:
    """The SQLite database of a server started with `env()`, filled and freed by the test."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "hidream.sqlite3"
        self.control = data_dir.parent / f"{data_dir.name}.page-limit"

    def env(self) -> dict[str, str]:
        python_path = os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))
        return {"PYTHONPATH": python_path, "FULL_DISK_CONTROL": str(self.control)}

    def fill(self) -> None:
        """Not one page more: the database is held at its size and its free pages are taken."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA synchronous = OFF")
            db.execute("CREATE TABLE IF NOT EXISTS filler (junk BLOB)")
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            self.control.write_text(str(pages))
            db.execute(f"PRAGMA max_page_count = {pages}")
            for size in (1000, 100, 10):
                try:
                    while True:
                        db.execute("INSERT INTO filler VALUES (zeroblob(?))", (size,))
                except sqlite3.OperationalError as exc:
                    assert "full" in str(exc), exc

    def free(self) -> None:
        self.control.write_text("")


def replicate_prediction(server: ServerProcess, payload: dict[str, Any], webhook: str) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/v1/models/hidream/noop/predictions",
        json={"input": payload, "webhook": webhook},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    prediction: dict[str, Any] = response.json()
    return prediction


def status_of(server: ServerProcess, request_id: str) -> str:
    return str(httpx.get(f"{server.url}/v1/requests/{request_id}", timeout=10).json()["status"])


def health(server: ServerProcess) -> httpx.Response:
    return httpx.get(f"{server.url}/health", timeout=10)


#: A submit through each dialect, and the keys of its error shape.
SUBMITS = {
    "fal": ("/hidream/noop", {"prompt": BIG_PROMPT}, {"detail"}),
    "replicate": (
        "/v1/models/hidream/noop/predictions",
        {"input": {"prompt": BIG_PROMPT}},
        {"title", "detail", "status"},
    ),
    "wavespeed": ("/api/v3/wavespeed-ai/hidream-i1-fast", {"prompt": BIG_PROMPT}, {"code", "message", "data"}),
    "openai": ("/v1/images/generations", {"model": "hidream-i1-fast", "prompt": BIG_PROMPT}, {"error"}),
}


def test_a_database_that_fills_mid_job_degrades_health_refuses_submits_and_recovers_without_restart(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    disk = FillableDatabase(tmp_path / "data")
    # Submits of an I1 model are refused before anything runs it; one attempt per job keeps it short.
    env = {**disk.env(), "HIDREAM_MODELS": "fast", "HIDREAM_MAX_JOB_ATTEMPTS": "1"}
    with ServerProcess(tmp_path / "data", env=env) as server:
        running = replicate_prediction(
            server, {"prompt": BIG_PROMPT, "num_steps": 50, "step_seconds": 0.1}, receiver.url("/running")
        )
        wait_until(lambda: status_of(server, running["id"]) == "IN_PROGRESS")
        disk.fill()

        # Neither its lease nor its ending can be written: the worker exits once the run is over,
        # and the dead worker's replacement waits until its job can be recovered.
        degraded = wait_until(lambda: (answer := health(server)).status_code == 503 and answer.json(), timeout=30)
        assert degraded["status"] == "degraded" and "database or disk is full" in degraded["reason"]
        stopped = wait_until(
            lambda: "recovering the jobs of worker" in (answer := health(server).json()).get("reason", "") and answer,
            timeout=30,
        )
        assert stopped["status"] == "degraded" and stopped["workers"] == 0
        assert stopped["reason"].startswith(
            "no worker can run: the job store cannot be written (database or disk is full)"
        )
        for dialect, (path, body, shape) in SUBMITS.items():
            refused = httpx.post(f"{server.url}{path}", json=body, headers={"Idempotency-Key": dialect}, timeout=30)
            assert refused.status_code == 507, (dialect, refused.text)
            assert set(refused.json()) == shape, (dialect, refused.text)
            assert "full" in refused.text, (dialect, refused.text)

        disk.free()
        wait_until(lambda: health(server).status_code == 200, timeout=30)
        assert health(server).json()["status"] == "ok"
        # The run whose ending could not be written is over; its job ends (as a lost worker's, this
        # being its last attempt) and says so to its webhook.
        (ended,) = receiver.wait_for("/running", timeout=30)
        assert ended.json()["id"] == running["id"] and ended.json()["status"] == "failed"
        # The refused submits left nothing behind: the same Idempotency-Key starts a new job.
        again = httpx.post(
            f"{server.url}/hidream/noop",
            json={"prompt": BIG_PROMPT},
            params={"fal_webhook": receiver.url("/again")},
            headers={"Idempotency-Key": "fal"},
            timeout=10,
        )
        assert again.status_code == 200, again.text
        (done,) = receiver.wait_for("/again", timeout=30)
        assert done.json()["status"] == "OK"
        listed = httpx.get(f"{server.url}/v1/requests", timeout=10).json()["requests"]
        assert {request["request_id"] for request in listed} == {running["id"], again.json()["request_id"]}


def test_a_write_the_database_has_no_room_for_fails_as_full_and_the_store_writes_again_once_it_has(
    tmp_path: Path,
) -> None:
    store = SqlJobStore(Database(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"))
    migrate(store.db)
    big = JobRequest(endpoint="hidream/noop", input={"prompt": "p" * 1_000_000})
    with store.db.read() as tx:  # this thread's connection, which the writes below use too
        tx.run(f"PRAGMA max_page_count = {tx.scalar('PRAGMA page_count')}")

    with pytest.raises(sqlite3.OperationalError) as refused:
        store.insert("refused", big, "hash", time.time())

    # SQLite's own error, not that of a ROLLBACK of the transaction SQLite had already undone.
    assert refused.value.sqlite_errorcode == sqlite3.SQLITE_FULL
    assert store.get("refused") is None
    with store.db.read() as tx:
        tx.run("PRAGMA max_page_count = 4294967294")
    store.insert("accepted", big, "hash", time.time())
    assert store.get("accepted") is not None
    store.close()


def test_full_storage_is_recognised_whichever_layer_reports_it() -> None:
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(OSError) as no_space:
        full.write(b"x")
    with contextlib.closing(sqlite3.connect(":memory:")) as database:
        database.execute("CREATE TABLE t (x BLOB)")
        database.execute(f"PRAGMA max_page_count = {database.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(sqlite3.OperationalError) as sqlite_full:
            database.execute("INSERT INTO t VALUES (zeroblob(100000))")
    with pytest.raises(sqlite3.OperationalError) as locked:
        raise sqlite3.OperationalError("database is locked")

    assert is_storage_full(no_space.value)
    assert is_storage_full(sqlite_full.value)
    assert is_storage_full(psycopg.errors.DiskFull("could not extend file: No space left on device"))
    assert not is_storage_full(locked.value)
    assert not is_storage_full(OSError(errno.EACCES, "Permission denied"))


def test_an_output_file_and_its_name_are_on_disk_before_put_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalOutputStorage(tmp_path / "outputs")
    (tmp_path / "outputs").mkdir()
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    def recording_replace(source: Any, target: Any) -> None:
        events.append(("rename", str(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)

    storage.put("job/0.png", b"first")
    storage.put("job/1.png", b"second")

    outputs = tmp_path / "outputs"
    assert events == [
        ("fsync", str(outputs / "job" / "0.png.partial")),  # the bytes, under a name no reader uses
        ("rename", str(outputs / "job" / "0.png")),
        ("fsync", str(outputs / "job")),  # the name
        ("fsync", str(outputs)),  # the directory that was made for it
        ("fsync", str(outputs / "job" / "1.png.partial")),
        ("rename", str(outputs / "job" / "1.png")),
        ("fsync", str(outputs / "job")),
    ]
    assert (outputs / "job" / "1.png").read_bytes() == b"second"


def test_an_output_the_disk_has_no_room_for_leaves_no_file_behind(tmp_path: Path) -> None:
    storage = LocalOutputStorage(tmp_path / "outputs")
    (tmp_path / "outputs" / "job").mkdir(parents=True)
    # Whatever is written as the partial file lands on /dev/full: a genuine "No space left on device".
    (tmp_path / "outputs" / "job" / "0.png.partial").symlink_to("/dev/full")

    with pytest.raises(OSError) as refused:
        storage.put("job/0.png", b"an image")

    assert refused.value.errno == errno.ENOSPC and is_storage_full(refused.value)
    assert list((tmp_path / "outputs" / "job").iterdir()) == []
