"""GET /metrics after real traffic: jobs that succeed, fail and are cancelled (queued and running),
webhooks that are delivered at once, after a retry, or never; read back with prometheus-client's
own parser, every counter and histogram count matches what happened. Two nodes sharing Postgres
report the same backlog."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Reply, ServerProcess, WebhookReceiver, wait_until

NOOP = "hidream/noop"
USER, ADMIN = "user-key-1", "admin-key-1"
SECONDS_OF_WORK = {"num_steps": 200, "step_seconds": 0.05}  # long enough to be seen queued or running


def scrape(url: str, key: str = ADMIN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    response = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_happened(tmp_path: Path) -> None:
    def answer(path: str, nth: int) -> Reply:
        if path == "/down":
            return Reply(500)
        return Reply(500 if path == "/flaky" and nth == 0 else 200)

    env = {
        "HIDREAM_API_KEYS": f"{USER},{ADMIN}",
        "HIDREAM_ADMIN_KEYS": ADMIN,
        "HIDREAM_WORKERS": "1",
        "HIDREAM_ALLOW_PRIVATE_URLS": "true",  # the receiver is on loopback
    }
    with WebhookReceiver(responder=answer) as receiver, ServerProcess(tmp_path / "d", env=env) as server:
        headers = {"authorization": f"Key {USER}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:

            def submit(body: dict[str, object], hook: str | None = None) -> str:
                params = {"fal_webhook": receiver.url(hook)} if hook else {}
                response = http.post(f"/{NOOP}", params=params, json=body)
                assert response.status_code == 200, response.text
                request_id: str = response.json()["request_id"]
                return request_id

            def status(request_id: str) -> str:
                value: str = http.get(f"/v1/requests/{request_id}").json()["status"]
                return value

            # The one worker runs a long job; a job behind it is cancelled while queued, then the long one.
            running = submit(SECONDS_OF_WORK)
            wait_until(lambda: status(running) == "IN_PROGRESS", timeout=15)
            queued = submit({})
            assert http.put(f"/{NOOP}/requests/{queued}/cancel").status_code == 202
            assert http.put(f"/{NOOP}/requests/{running}/cancel").status_code == 202
            wait_until(lambda: status(running) == "CANCELLED", timeout=15)
            # Two successes (delivered at once; 500 then delivered), a failure whose receiver is down.
            done = [submit({"num_steps": 3, "step_seconds": 0.02}, "/ok"), submit({}, "/flaky")]
            failed = submit({"fail_with": "boom"}, "/down")
            for request_id in [*done, failed]:
                wait_until(lambda request_id=request_id: status(request_id) == "COMPLETED", timeout=15)
            receiver.wait_for("/ok")
            receiver.wait_for("/flaky", 2)
            receiver.wait_for("/down", 4)  # the harness's schedule: four attempts, then given up

        # Users cannot read the metrics; admins can.
        assert httpx.get(f"{server.url}/metrics", headers=headers).status_code == 403
        assert httpx.get(f"{server.url}/metrics").status_code == 401

        def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            samples = scrape(server.url)
            return samples if sample(samples, "hidream_webhook_attempts_total", outcome="5xx") == 5 else {}

        samples = wait_until(settled, timeout=10)

    def count(name: str, **labels: str) -> float:
        return sample(samples, name, **labels)

    fal = {"endpoint": NOOP, "dialect": "fal"}
    assert count("hidream_jobs_submitted_total", **fal) == 5
    assert count("hidream_jobs_ended_total", **fal, outcome="ok") == 2
    assert count("hidream_jobs_ended_total", **fal, outcome="validation_error") == 1
    assert count("hidream_jobs_ended_total", **fal, outcome="cancelled") == 2
    # Four jobs started (the one cancelled in the queue never did); each ran once, alone.
    assert count("hidream_job_queue_wait_seconds_count", endpoint=NOOP) == 4
    assert count("hidream_job_run_seconds_count", endpoint=NOOP) == 4
    assert count("hidream_batch_size_count", endpoint=NOOP) == 4
    assert count("hidream_batch_size_sum", endpoint=NOOP) == 4
    # Steps are timed in runs that reported at least two: the long one and the three-step one.
    assert count("hidream_denoising_steps_per_second_count", endpoint=NOOP) == 2
    # Attempts: /ok 200; /flaky 500 then 200; /down 500 four times.
    assert count("hidream_webhook_attempts_total", outcome="2xx") == 2
    assert count("hidream_webhook_attempts_total", outcome="5xx") == 5
    assert count("hidream_webhook_attempt_seconds_count") == 7
    assert count("hidream_job_submit_to_webhook_seconds_count", endpoint=NOOP) == 2
    # Nothing is left: the queue is empty, no worker is busy, no delivery is pending.
    assert count("hidream_jobs_queued", endpoint=NOOP) == 0
    assert count("hidream_jobs_running", endpoint=NOOP) == 0
    assert count("hidream_workers_alive") == 1
    assert count("hidream_workers_busy") == 0
    assert count("hidream_webhook_deliveries_due") == 0
    assert count("hidream_webhook_deliveries_retrying") == 0
    assert count("hidream_webhook_oldest_undelivered_age_seconds") == 0
    assert count("hidream_metrics_store_up") == 1


def test_two_nodes_report_the_same_backlog(tmp_path: Path, postgres_url: str) -> None:
    def node(name: str) -> ServerProcess:
        return ServerProcess(
            tmp_path / name,
            env={
                "HIDREAM_DATABASE_URL": postgres_url,
                "HIDREAM_OUTPUTS_DIR": str(tmp_path / "outputs"),
                "HIDREAM_WEBHOOK_SECRET": "",
                "HIDREAM_WORKERS": "1",
            },
        )

    with node("a") as a, node("b") as b, httpx.Client(timeout=10) as http:
        ids = [http.post(f"{a.url}/{NOOP}", json=SECONDS_OF_WORK).json()["request_id"] for _ in range(5)]

        def backlog(url: str) -> tuple[float, float]:
            samples = scrape(url)
            return sample(samples, "hidream_jobs_queued", endpoint=NOOP), sample(
                samples, "hidream_jobs_running", endpoint=NOOP
            )

        # Each node's one worker takes a job; three wait, and both nodes say so.
        wait_until(lambda: backlog(a.url) == (3, 2), timeout=15)
        assert backlog(b.url) == (3, 2)
        # Busy workers are each node's own.
        assert sample(scrape(a.url), "hidream_workers_busy") == 1
        assert sample(scrape(b.url), "hidream_workers_busy") == 1
        for request_id in ids:
            http.put(f"{a.url}/{NOOP}/requests/{request_id}/cancel")
