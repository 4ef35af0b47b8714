"""Nothing accepted is lost: worker crashes, server crashes and dead receivers."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from tests.integration.harness import TEST_SECRET, ServerProcess, WebhookReceiver, wait_until

SLOW_NOOP = {"num_steps": 40, "step_seconds": 0.05}


def status_of(server: ServerProcess, handle: dict[str, str]) -> str:
    return str(httpx.get(handle["status_url"], timeout=10).json()["status"])


def submit(server: ServerProcess, body: dict[str, object], webhook: str | None = None) -> dict[str, str]:
    params = {"fal_webhook": webhook} if webhook else None
    response = httpx.post(f"{server.url}/hidream/noop", json=body, params=params, timeout=10)
    assert response.status_code == 200, response.text
    handle: dict[str, str] = response.json()
    return handle


def deliveries(data_dir: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(data_dir / "hidream.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM webhook_deliveries ORDER BY created_at").fetchall()


def test_a_killed_worker_job_is_rerun_and_webhooked_once(tmp_path: Path, receiver: WebhookReceiver) -> None:
    with ServerProcess(tmp_path / "data") as server:
        handle = submit(server, SLOW_NOOP, receiver.url("/w"))
        wait_until(lambda: "step 3/" in httpx.get(handle["status_url"], params={"logs": 1}, timeout=10).text)
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGKILL)

        (hook,) = receiver.wait_for("/w", timeout=60)
        payload = Webhook(TEST_SECRET).verify(hook.body, hook.headers)
        assert payload["status"] == "OK"
        status = httpx.get(handle["status_url"], params={"logs": 1}, timeout=10).json()
        attempts = [line["message"] for line in status["logs"] if line["message"].startswith("running on worker")]
        assert [line[-11:] for line in attempts] == ["(attempt 1)", "(attempt 2)"]
        assert worker not in server.worker_pids()  # a fresh worker took over
        assert len(deliveries(server.data_dir)) == 1


def test_server_killed_mid_run_finishes_every_job_after_restart(tmp_path: Path, receiver: WebhookReceiver) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir).start()
    handles = [submit(server, SLOW_NOOP, receiver.url(f"/job{n}")) for n in range(3)]
    wait_until(lambda: status_of(server, handles[0]) == "IN_PROGRESS")
    workers = server.worker_pids()
    server.kill()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=10)

    with ServerProcess(data_dir, port=server.port) as restarted:
        for n, handle in enumerate(handles):
            wait_until(lambda handle=handle: status_of(restarted, handle) == "COMPLETED", timeout=60)
            (hook,) = receiver.wait_for(f"/job{n}", timeout=30)
            assert hook.json()["status"] == "OK"
            assert hook.json()["request_id"] == handle["request_id"]


def test_webhook_retries_until_the_receiver_answers(tmp_path: Path) -> None:
    with WebhookReceiver(responses=[500, 503]) as receiver, ServerProcess(tmp_path / "data") as server:
        handle = submit(server, {}, receiver.url("/flaky"))

        hooks = receiver.wait_for("/flaky", count=3)
        assert len({hook.headers["webhook-id"] for hook in hooks}) == 1  # one event, three attempts
        for hook in hooks:
            Webhook(TEST_SECRET).verify(hook.body, hook.headers)
        assert hooks[0].body == hooks[2].body
        wait_until(lambda: deliveries(server.data_dir)[0]["state"] == "delivered")
        (row,) = deliveries(server.data_dir)
        assert row["attempts"] == 3
        with sqlite3.connect(server.data_dir / "hidream.sqlite3") as conn:
            codes = [code for (code,) in conn.execute("SELECT status_code FROM webhook_attempts ORDER BY attempt")]
        assert codes == [500, 503, 200]
        assert hooks[0].json()["request_id"] == handle["request_id"]


def test_pending_webhooks_survive_a_server_crash(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"HIDREAM_WEBHOOK_RETRY_SCHEDULE": "0,0.3,60"}  # third try would be a minute away
    with WebhookReceiver(responses=[500, 500]) as receiver:
        server = ServerProcess(data_dir, env=env).start()
        submit(server, {}, receiver.url("/later"))
        receiver.wait_for("/later", count=2)
        server.kill()

        with ServerProcess(data_dir, env={"HIDREAM_WEBHOOK_RETRY_SCHEDULE": "0,0.3,60"}):
            wait_until(lambda: deliveries(data_dir)[0]["attempts"] == 2)
            assert deliveries(data_dir)[0]["state"] == "pending"  # still scheduled, not lost


def test_exhausted_webhook_is_marked_failed_and_kept(tmp_path: Path) -> None:
    with WebhookReceiver(responses=[500] * 10) as receiver, ServerProcess(tmp_path / "data") as server:
        submit(server, {}, receiver.url("/dead"))

        receiver.wait_for("/dead", count=4)
        wait_until(lambda: deliveries(server.data_dir)[0]["state"] == "failed")
        assert deliveries(server.data_dir)[0]["attempts"] == 4  # the schedule has four entries


@pytest.mark.parametrize("code", [301, 410])
def test_redirects_are_not_followed_and_410_stops_retries(tmp_path: Path, code: int) -> None:
    with WebhookReceiver(responses=[code] * 10) as receiver, ServerProcess(tmp_path / "data") as server:
        submit(server, {}, receiver.url("/moved"))

        receiver.wait_for("/moved")
        wait_until(lambda: deliveries(server.data_dir)[0]["attempts"] >= 1)
        if code == 410:
            wait_until(lambda: deliveries(server.data_dir)[0]["state"] == "failed")
            assert deliveries(server.data_dir)[0]["attempts"] == 1
        else:
            assert deliveries(server.data_dir)[0]["state"] in ("pending", "failed")


def test_a_dead_receiver_does_not_slow_new_jobs(tmp_path: Path) -> None:
    blackhole = f"http://127.0.0.1:{_closed_port()}/hook"
    with ServerProcess(tmp_path / "data") as server:
        for _ in range(5):
            submit(server, {}, blackhole)
        handle = submit(server, {})
        wait_until(lambda: status_of(server, handle) == "COMPLETED", timeout=10)


def _closed_port() -> int:
    from tests.integration.harness import free_port

    return free_port()  # nothing listens there once the probe socket is closed
