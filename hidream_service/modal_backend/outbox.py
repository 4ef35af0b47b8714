"""The webhook outbox in modal.Dicts: the same contract as webhooks.outbox.SqlOutbox.

- `deliveries`: each delivery a versioned record (claims and outcomes are compare-and-sets), its
  attempts an append-only log, and per request an append-only list of its delivery ids.
- `due`: delivery id -> when it is next due, for pending deliveries only. It is an index, read
  whole by `claim_due`; entries may be stale (a lost write), and the record always decides.

A delivery is enqueued once per webhook-id (a second enqueue of the same id is a no-op), so a job
that ends twice still sends one event. `on_enqueued` is told about each new delivery; on Modal it
spawns the CPU function that sends it, so nothing waits on a receiver inside a GPU container.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from hidream_service.modal_backend.kv import AppendOnlyLog, KeyValueStore, Record, VersionedRecords
from webhooks.outbox import (
    RESPONSE_HEAD_BYTES,
    AttemptRecord,
    Delivery,
    DeliveryState,
    OutboxMessage,
    delivery_from_record,
)


def _attempt_record(attempt: AttemptRecord) -> Record:
    return {
        "started_at": attempt.started_at,
        "latency_ms": attempt.latency_ms,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "response_head": None if attempt.response_head is None else attempt.response_head[:RESPONSE_HEAD_BYTES],
        "replay": attempt.replay,
    }


class DictOutbox:
    def __init__(
        self,
        deliveries: KeyValueStore,
        due: KeyValueStore,
        *,
        on_enqueued: Callable[[str], None] = lambda delivery_id: None,
    ) -> None:
        self._records = VersionedRecords(deliveries)
        self._logs = AppendOnlyLog(deliveries)
        self._due = due
        self._on_enqueued = on_enqueued

    def close(self) -> None:
        """Nothing to release: Dict handles hold no connection of their own."""

    # -- writing side (the job store, when a job ends or reports progress) ----------------------

    def enqueue(self, message: OutboxMessage, due_at: float) -> bool:
        """Record a delivery; a no-op returning False when this webhook-id is already on record."""
        record = {
            **dataclasses.asdict(message),
            "state": DeliveryState.PENDING.value,
            "attempts": 0,
            "next_attempt_at": due_at,
            "claimed": False,
            "created_at": due_at,
            "finished_at": None,
            "last_error": None,
        }
        if not self._records.create(f"delivery:{message.id}", record):
            return False
        if message.subject:
            self._logs.append(f"subject:{message.subject}", message.id)
        self._due.put(message.id, due_at)
        self._on_enqueued(message.id)
        return True

    # -- delivery side (webhooks.Outbox) --------------------------------------------------------

    def claim_due(self, now: float, *, claim_seconds: float, limit: int) -> list[Delivery]:
        candidates = sorted(
            ((float(due_at), delivery_id) for delivery_id, due_at in self._due.items() if float(due_at) <= now),
        )
        claimed: list[Delivery] = []
        for _, delivery_id in candidates:
            if len(claimed) >= limit:
                break

            def claim(record: Record) -> Record | None:
                due_at = record["next_attempt_at"]
                if record["state"] != DeliveryState.PENDING.value or due_at is None or due_at > now:
                    return None
                return {**record, "next_attempt_at": now + claim_seconds, "claimed": True}

            won = self._records.update(f"delivery:{delivery_id}", claim)
            if won is not None:
                self._due.put(delivery_id, now + claim_seconds)
                claimed.append(delivery_from_record(won))
            else:
                self._refresh_due(delivery_id)
        return claimed

    def release_claims(self, now: float) -> int:
        released = 0
        for delivery_id, _ in list(self._due.items()):

            def release(record: Record) -> Record | None:
                if not record["claimed"] or record["state"] != DeliveryState.PENDING.value:
                    return None
                return {**record, "claimed": False, "next_attempt_at": now}

            if self._records.update(f"delivery:{delivery_id}", release) is not None:
                self._due.put(delivery_id, now)
                released += 1
        return released

    def next_due_at(self) -> float | None:
        times = [float(due_at) for _, due_at in self._due.items()]
        return min(times) if times else None

    def record_attempt(
        self, delivery_id: str, attempt: AttemptRecord, *, state: DeliveryState, next_attempt_at: float | None
    ) -> None:
        finished_at = None if state is DeliveryState.PENDING else attempt.started_at + attempt.latency_ms / 1000
        self._logs.append(f"attempts:{delivery_id}", _attempt_record(attempt))

        def outcome(record: Record) -> Record:
            return {
                **record,
                "attempts": record["attempts"] + 1,
                "state": state.value,
                "next_attempt_at": next_attempt_at,
                "finished_at": finished_at,
                "last_error": attempt.error,
                "claimed": False,
            }

        self._records.update(f"delivery:{delivery_id}", outcome)
        self._set_due(delivery_id, state, next_attempt_at)

    def record_replay(self, delivery_id: str, attempt: AttemptRecord, *, delivered: bool) -> None:
        self._logs.append(f"attempts:{delivery_id}", _attempt_record(attempt))
        if not delivered:
            return

        def mark_delivered(record: Record) -> Record:
            finished = attempt.started_at + attempt.latency_ms / 1000
            return {
                **record,
                "state": DeliveryState.DELIVERED.value,
                "next_attempt_at": None,
                "finished_at": finished,
                "last_error": None,
            }

        self._records.update(f"delivery:{delivery_id}", mark_delivered)
        self._due.pop(delivery_id, None)

    def get(self, delivery_id: str) -> Delivery | None:
        record = self._records.get(f"delivery:{delivery_id}")
        return None if record is None else delivery_from_record(record)

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        return [AttemptRecord(**entry) for entry in self._logs.read(f"attempts:{delivery_id}")]

    def for_subject(self, subject: str) -> list[Delivery]:
        ids = dict.fromkeys(self._logs.read(f"subject:{subject}"))  # ordered, without repeats
        found = [self.get(delivery_id) for delivery_id in ids]
        return sorted((delivery for delivery in found if delivery is not None), key=lambda d: d.created_at)

    def final_for_subjects(self, subjects: Sequence[str]) -> dict[str, Delivery]:
        """Each subject's newest retried delivery (its ending's webhook); progress events are left out."""
        finals: dict[str, Delivery] = {}
        for subject in subjects:
            retried = [delivery for delivery in self.for_subject(subject) if not delivery.single_attempt]
            if retried:
                finals[subject] = retried[-1]
        return finals

    # -- the due index ---------------------------------------------------------------------------

    def _set_due(self, delivery_id: str, state: DeliveryState, next_attempt_at: float | None) -> None:
        if state is DeliveryState.PENDING and next_attempt_at is not None:
            self._due.put(delivery_id, next_attempt_at)
        else:
            self._due.pop(delivery_id, None)

    def _refresh_due(self, delivery_id: str) -> None:
        """Make a stale index entry agree with the record it points at."""
        record: dict[str, Any] | None = self._records.get(f"delivery:{delivery_id}")
        if record is None:
            self._due.pop(delivery_id, None)
        else:
            self._set_due(delivery_id, DeliveryState(record["state"]), record["next_attempt_at"])
