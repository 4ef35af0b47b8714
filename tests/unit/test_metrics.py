"""The metrics module alone, over small stand-ins for the store: labels come from fixed sets, and the
dashboard and README name only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hidream_service.jobs.model import JobStatus
from hidream_service.jobs.reports import GpuMemory, JobEnded, JobStarted, JobSubmitted, ModelLoaded, RunMeasured
from hidream_service.metrics import Metrics, ending_id
from webhooks.delivery import AttemptOutcome
from webhooks.outbox import AttemptRecord, Backlog, Delivery, DeliveryState

ROOT = Path(__file__).resolve().parents[2]


class Store:
    def active(self) -> tuple[dict[tuple[str, JobStatus], int], list[str]]:
        return {("hidream/noop", JobStatus.IN_QUEUE): 2, ("made/up", JobStatus.IN_PROGRESS): 1}, [
            "n.w0-a:1",
            "m.w0-b:2",
        ]


class Outbox:
    def backlog(self, now: float) -> Backlog:
        return Backlog(due=1, retrying=1, oldest_created_at=now - 5)


def metrics() -> Metrics:
    return Metrics(
        endpoints=["hidream/noop"],
        dialects=["fal"],
        models=["full"],
        store=Store(),
        outbox=Outbox(),
        workers_alive=lambda: 2,
        node="n",
        clock=lambda: 1000.0,
    )


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(m.render().decode())
        for s in family.samples
    }


def test_label_values_outside_the_fixed_sets_are_counted_as_other() -> None:
    m = metrics()
    m.record(JobSubmitted("made/up", "a-request-value"))
    m.record(JobEnded("j", "hidream/noop", "fal", "something new", 1.0, 0.5, has_webhook=False))
    m.record(ModelLoaded("not-a-model", 3.0))
    found = samples(m)
    assert found[("hidream_jobs_submitted_total", (("dialect", "other"), ("endpoint", "other")))] == 1
    assert (
        found[("hidream_jobs_ended_total", (("dialect", "fal"), ("endpoint", "hidream/noop"), ("outcome", "other")))]
        == 1
    )
    assert found[("hidream_model_load_seconds_count", (("model", "other"),))] == 1
    assert found[("hidream_jobs_running", (("endpoint", "other"),))] == 1
    assert found[("hidream_workers_busy", ())] == 1  # only this node's worker
    assert found[("hidream_webhook_oldest_undelivered_age_seconds", ())] == 5


def test_the_dashboard_and_readme_name_only_metrics_that_exist() -> None:
    m = metrics()
    for report in (
        JobSubmitted("hidream/noop", "fal"),
        JobStarted("hidream/noop", "fal", 0.1),
        JobEnded("j", "hidream/noop", "fal", "ok", 1.0, 0.5, has_webhook=True),
        RunMeasured("hidream/noop", 1, 10.0),
        ModelLoaded("full", 3.0),
        GpuMemory("n.w0", "full", 10, 20),
    ):
        m.record(report)
    job_id = "1234-5678"
    delivery = Delivery(
        ending_id(job_id), "http://x", b"{}", "fal", "", job_id, False, DeliveryState.PENDING, 0, None, 1.0, None, None
    )
    m.record(JobEnded(job_id, "hidream/noop", "fal", "ok", 1.0, 0.5, has_webhook=True))
    m.observe_attempt(delivery, AttemptOutcome(AttemptRecord(2.0, 5.0, status_code=200), delivered=True))
    families = list(text_string_to_metric_families(m.render().decode()))
    names = {s.name for family in families for s in family.samples} | {family.name for family in families}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for query in queries for name in re.findall(r"hidream_[a-z_]+", query)}
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(hidream_[a-z_]+)", readme))
    assert used and documented
    assert used - names == set()
    assert {name.removesuffix("_total") for name in documented} - names == set()
