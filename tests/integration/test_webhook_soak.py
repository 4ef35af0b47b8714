"""200 jobs through a receiver that misbehaves on purpose, with a server crash in the middle."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path

import httpx

from tests.integration.harness import Reply, ServerProcess, WebhookReceiver, free_port, wait_until

SCHEDULE = "0,0.1,0.2,0.3,0.5,0.8,1"
ENV = {
    "HIDREAM_WEBHOOK_RETRY_SCHEDULE": SCHEDULE,
    "HIDREAM_WEBHOOK_THROTTLE_SECONDS": "0.3",
    "HIDREAM_WEBHOOK_TIMEOUT_SECONDS": "0.5",
    "HIDREAM_MAX_QUEUED_PER_KEY": "0",  # all 210 are queued at once, faster than one worker runs them
}
EVENTUALLY_OK = ("ok", "flaky", "hang", "throttle", "moved")
BEHAVIOURS = (*EVENTUALLY_OK, "gone", "closed")
JOBS = 210


def misbehave(path: str, nth: int) -> Reply:
    kind = path.split("/")[1]
    if kind == "flaky" and nth < 2:
        return Reply(500)
    if kind == "hang" and nth == 0:
        return Reply(200, delay=1.5)  # answers after the sender's 0.5 s timeout
    if kind == "throttle" and nth == 0:
        return Reply(429, {"retry-after": "0.2"})
    if kind == "moved" and nth == 0:
        return Reply(301, {"location": "http://127.0.0.1:1/elsewhere"})
    if kind == "gone":
        return Reply(410)
    return Reply(200)


def final_states(data_dir: Path) -> dict[str, tuple[str, int, str]]:
    with sqlite3.connect(data_dir / "hidream.sqlite3") as conn:
        rows = conn.execute("SELECT subject, state, attempts, id FROM webhook_deliveries").fetchall()
    return {subject: (state, attempts, webhook_id) for subject, state, attempts, webhook_id in rows}


def attempt_log(data_dir: Path, request_id: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(data_dir / "hidream.sqlite3") as conn:
        return conn.execute(
            "SELECT a.attempt, a.status_code, a.error FROM webhook_attempts a JOIN webhook_deliveries d"
            " ON a.delivery_id = d.id WHERE d.subject = ? ORDER BY a.attempt",
            (request_id,),
        ).fetchall()


def test_every_terminal_event_arrives_once_per_id_through_misbehaviour_and_a_crash(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    closed = f"http://127.0.0.1:{free_port()}"
    kinds: dict[str, str] = {}
    with WebhookReceiver(responder=misbehave) as receiver:
        server = ServerProcess(data_dir, env=ENV).start()
        with httpx.Client(timeout=10) as client:
            for n in range(JOBS):
                if n == JOBS // 2:
                    server.kill()  # kill -9 with jobs queued and webhooks pending
                    server = ServerProcess(data_dir, env=ENV, port=server.port).start()
                kind = BEHAVIOURS[n % len(BEHAVIOURS)]
                url = f"{closed}/closed/{n}" if kind == "closed" else receiver.url(f"/{kind}/{n}")
                response = client.post(f"{server.url}/hidream/noop", params={"fal_webhook": url}, json={"seed": n})
                assert response.status_code == 200
                kinds[response.json()["request_id"]] = kind

        def settled() -> bool:
            states = final_states(data_dir)
            return len(states) == JOBS and all(state != "pending" for state, _, _ in states.values())

        wait_until(settled, timeout=120, interval=0.2)
        server.stop()

    states = final_states(data_dir)
    for request_id, kind in kinds.items():
        state, attempts, _ = states[request_id]
        if kind in EVENTUALLY_OK:
            assert state == "delivered", (kind, attempts)
        elif kind == "gone":
            assert (state, attempts) == ("failed", 1), attempt_log(data_dir, request_id)
        else:
            assert (state, attempts) == ("failed", len(SCHEDULE.split(",")))

    bodies_by_id: dict[str, set[bytes]] = defaultdict(set)
    ids_by_request: dict[str, set[str]] = defaultdict(set)
    for hook in receiver.received:
        bodies_by_id[hook.headers["webhook-id"]].add(hook.body)
        ids_by_request[hook.json()["request_id"]].add(hook.headers["webhook-id"])
    assert all(len(bodies) == 1 for bodies in bodies_by_id.values())  # no id is two different events
    assert all(len(ids) == 1 for ids in ids_by_request.values())  # no event under two ids
    reached = {request_id for request_id, kind in kinds.items() if kind != "closed"}
    assert set(ids_by_request) == reached
    answered_ok = {hook.json()["request_id"] for hook in receiver.received if hook.path.split("/")[1] in EVENTUALLY_OK}
    assert answered_ok == {r for r, kind in kinds.items() if kind in EVENTUALLY_OK}
