"""The outbox's delivery side, on SQLite and on Postgres (several nodes, and the Modal deployment)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sql_stores import migrated
from webhooks import outbox as sql_outbox
from webhooks.outbox import AttemptRecord, DeliveryState, Outbox, OutboxMessage, SqlOutbox

NOW = 1_000_000.0


@dataclass
class Subject:
    outbox: Outbox
    enqueue: Callable[[OutboxMessage, float], None]


@pytest.fixture(params=["sqlite", "postgres"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else f"sqlite:///{tmp_path}/o.db"
    db = migrated(url)
    box = SqlOutbox(db)

    def enqueue(message: OutboxMessage, due_at: float) -> None:
        with db.write() as conn:
            sql_outbox.enqueue(conn, message, due_at)

    yield Subject(box, enqueue)
    box.close()


def message(name: str, subject: str = "job-1") -> OutboxMessage:
    return OutboxMessage(id=name, url="http://127.0.0.1:9/hook", body=b'{"n":1}', signer="standard", subject=subject)


def test_only_due_deliveries_are_claimed_and_a_claim_holds_until_it_runs_out(subject: Subject) -> None:
    subject.enqueue(message("now"), NOW)
    subject.enqueue(message("later"), NOW + 60)

    (claimed,) = subject.outbox.claim_due(NOW, claim_seconds=45, limit=10)
    assert claimed.id == "now" and claimed.body == b'{"n":1}'
    assert subject.outbox.claim_due(NOW + 1, claim_seconds=45, limit=10) == []
    reclaimed = subject.outbox.claim_due(NOW + 61, claim_seconds=45, limit=10)
    assert sorted(d.id for d in reclaimed) == ["later", "now"]  # the first claim ran out unrecorded


def test_claims_respect_the_limit_oldest_first(subject: Subject) -> None:
    for n in range(3):
        subject.enqueue(message(f"m{n}"), NOW - 10 + n)

    assert [d.id for d in subject.outbox.claim_due(NOW, claim_seconds=45, limit=2)] == ["m0", "m1"]


def test_enqueueing_the_same_webhook_id_twice_keeps_one_delivery(subject: Subject) -> None:
    subject.enqueue(message("same"), NOW)
    subject.enqueue(message("same"), NOW + 5)

    assert [d.id for d in subject.outbox.for_subject("job-1")] == ["same"]


def test_a_failed_attempt_is_recorded_and_scheduled_again(subject: Subject) -> None:
    subject.enqueue(message("m"), NOW)
    (claimed,) = subject.outbox.claim_due(NOW, claim_seconds=45, limit=1)
    failure = AttemptRecord(NOW, 12.5, status_code=503, error="HTTP 503", response_head="busy")
    subject.outbox.record_attempt(claimed.id, failure, state=DeliveryState.PENDING, next_attempt_at=NOW + 5)

    stored = subject.outbox.get("m")
    assert stored is not None and stored.attempts == 1 and stored.last_error == "HTTP 503"
    assert subject.outbox.next_due_at() == NOW + 5
    assert subject.outbox.claim_due(NOW + 4, claim_seconds=45, limit=1) == []
    assert [d.id for d in subject.outbox.claim_due(NOW + 5, claim_seconds=45, limit=1)] == ["m"]
    assert subject.outbox.attempts("m") == [failure]


def test_a_delivered_webhook_is_never_due_again(subject: Subject) -> None:
    subject.enqueue(message("m"), NOW)
    subject.outbox.claim_due(NOW, claim_seconds=45, limit=1)
    success = AttemptRecord(NOW, 3.0, status_code=200, response_head="ok")
    subject.outbox.record_attempt("m", success, state=DeliveryState.DELIVERED, next_attempt_at=None)

    stored = subject.outbox.get("m")
    assert stored is not None and stored.state is DeliveryState.DELIVERED and stored.finished_at == NOW + 0.003
    assert subject.outbox.next_due_at() is None
    assert subject.outbox.claim_due(NOW + 10**6, claim_seconds=45, limit=10) == []


def test_a_replay_is_numbered_after_the_attempts_and_marks_delivered(subject: Subject) -> None:
    subject.enqueue(message("m"), NOW)
    subject.outbox.claim_due(NOW, claim_seconds=45, limit=1)
    subject.outbox.record_attempt(
        "m", AttemptRecord(NOW, 1.0, error="refused"), state=DeliveryState.FAILED, next_attempt_at=None
    )
    subject.outbox.record_replay("m", AttemptRecord(NOW + 100, 2.0, status_code=200, replay=True), delivered=True)

    assert [a.replay for a in subject.outbox.attempts("m")] == [False, True]
    stored = subject.outbox.get("m")
    assert stored is not None and stored.state is DeliveryState.DELIVERED and stored.last_error is None


def test_release_claims_makes_in_flight_deliveries_due_at_once(subject: Subject) -> None:
    subject.enqueue(message("m"), NOW)
    subject.outbox.claim_due(NOW, claim_seconds=45, limit=1)

    assert subject.outbox.release_claims(NOW + 1) == 1
    assert [d.id for d in subject.outbox.claim_due(NOW + 1, claim_seconds=45, limit=1)] == ["m"]


def test_deliveries_are_listed_per_subject_in_order(subject: Subject) -> None:
    subject.enqueue(message("start", "job-1"), NOW)
    subject.enqueue(message("other", "job-2"), NOW + 1)
    subject.enqueue(message("end", "job-1"), NOW + 2)

    assert [d.id for d in subject.outbox.for_subject("job-1")] == ["start", "end"]
    assert subject.outbox.get("missing") is None


def test_a_claim_passes_over_skipped_destinations_and_what_the_sender_refuses(subject: Subject) -> None:
    for name, url, due in [
        ("busy_1", "http://Busy_Host.test:9/a", NOW - 3),  # `_` is a LIKE wildcard: matched literally
        ("busy_2", "http://busy_host.test:9/b", NOW - 2),
        ("refused", "http://full.test/x", NOW - 1),
        ("other", "http://busyxhost.test:9/c", NOW),
    ]:
        subject.enqueue(OutboxMessage(name, url, b"{}", "standard"), due)
    skip = ["http://busy_host.test:9/"]

    claimed = subject.outbox.claim_due(
        NOW, claim_seconds=45, limit=10, skip_prefixes=skip, accept=lambda url: "full" not in url, window=10
    )

    assert [d.id for d in claimed] == ["other"]
    assert subject.outbox.next_due_at(skip_prefixes=skip) == NOW - 1  # the refused one is still due
    assert sorted(d.id for d in subject.outbox.claim_due(NOW, claim_seconds=45, limit=10)) == [
        "busy_1",
        "busy_2",
        "refused",
    ]
