"""The webhook outbox: every delivery and its attempts, persisted in SQLite.

A delivery row is written with `enqueue` inside the caller's own transaction (the one that ends the
job), so a job can never end without its webhook being on record. Delivery itself happens later,
elsewhere, from `SqliteOutbox` (or any other `Outbox`, such as one kept in a modal.Dict).
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,                    -- the webhook-id: one per event, the same on every attempt
    url TEXT NOT NULL,
    body BLOB NOT NULL,                     -- the exact bytes every attempt sends
    signer TEXT NOT NULL,                   -- name of the signing scheme for this receiver
    context TEXT NOT NULL DEFAULT '',       -- signer input besides the body (e.g. a request id)
    subject TEXT NOT NULL DEFAULT '',       -- what the event is about (a request id), for listing
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,                   -- due time while pending
    claimed INTEGER NOT NULL DEFAULT 0,     -- 1 while a sender has it in flight
    single_attempt INTEGER NOT NULL DEFAULT 0, -- 1: a progress event, sent once and never retried
    created_at REAL NOT NULL,
    finished_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_subject ON webhook_deliveries (subject);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempt INTEGER NOT NULL,
    started_at REAL NOT NULL,
    status_code INTEGER,
    latency_ms REAL NOT NULL,
    error TEXT,
    response_head TEXT,                     -- first 2 KB of the receiver's answer
    replay INTEGER NOT NULL DEFAULT 0,      -- 1: sent by hand through the replay API
    PRIMARY KEY (delivery_id, attempt)
);
"""

RESPONSE_HEAD_BYTES = 2048


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class OutboxMessage:
    id: str
    url: str
    body: bytes
    signer: str
    context: str = ""
    subject: str = ""
    single_attempt: bool = False


@dataclass(frozen=True)
class Delivery:
    id: str
    url: str
    body: bytes
    signer: str
    context: str
    subject: str
    single_attempt: bool
    state: DeliveryState
    attempts: int
    next_attempt_at: float | None
    created_at: float
    finished_at: float | None
    last_error: str | None


@dataclass(frozen=True)
class AttemptRecord:
    started_at: float
    latency_ms: float
    status_code: int | None = None
    error: str | None = None
    response_head: str | None = None
    replay: bool = False


class Outbox(Protocol):
    """The delivery side of an outbox, as the Deliverer and the delivery history API use it."""

    def close(self) -> None: ...

    def claim_due(self, now: float, *, claim_seconds: float, limit: int) -> list[Delivery]:
        """Take up to `limit` due deliveries; a claim that is never recorded runs out after `claim_seconds`."""

    def release_claims(self, now: float) -> int:
        """Make deliveries a dead sender had in flight due at once."""

    def next_due_at(self) -> float | None: ...

    def record_attempt(
        self, delivery_id: str, attempt: AttemptRecord, *, state: DeliveryState, next_attempt_at: float | None
    ) -> None:
        """Store one attempt and the delivery's new state together."""

    def record_replay(self, delivery_id: str, attempt: AttemptRecord, *, delivered: bool) -> None: ...

    def get(self, delivery_id: str) -> Delivery | None: ...

    def attempts(self, delivery_id: str) -> list[AttemptRecord]: ...

    def for_subject(self, subject: str) -> list[Delivery]: ...

    def final_for_subjects(self, subjects: Sequence[str]) -> dict[str, Delivery]:
        """Each subject's newest retried delivery (the event that ends it), by subject."""


def create_tables(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def enqueue(conn: sqlite3.Connection, message: OutboxMessage, due_at: float) -> None:
    """Record a delivery inside the caller's transaction. Enqueuing the same id twice is a no-op,
    so a job that runs twice still sends one event."""
    conn.execute(
        "INSERT OR IGNORE INTO webhook_deliveries (id, url, body, signer, context, subject, single_attempt,"
        " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.id,
            message.url,
            message.body,
            message.signer,
            message.context,
            message.subject,
            int(message.single_attempt),
            due_at,
            due_at,
        ),
    )


def delivery_from_record(record: sqlite3.Row | Mapping[str, Any]) -> Delivery:
    """A Delivery from its stored columns: a SQLite row here, a record in any other outbox."""
    return Delivery(
        id=record["id"],
        url=record["url"],
        body=bytes(record["body"]),
        signer=record["signer"],
        context=record["context"],
        subject=record["subject"],
        single_attempt=bool(record["single_attempt"]),
        state=DeliveryState(record["state"]),
        attempts=record["attempts"],
        next_attempt_at=record["next_attempt_at"],
        created_at=record["created_at"],
        finished_at=record["finished_at"],
        last_error=record["last_error"],
    )


class SqliteOutbox:
    """The delivery side of the outbox: claim due deliveries, record what each attempt did.

    Its commits are not forced to disk (`synchronous=NORMAL`): what a power cut can undo here is a
    claim or an attempt record, and either only means the event is sent again with the same
    webhook-id, which receivers already deduplicate. The deliveries themselves are enqueued
    durably, in the job's own transaction.
    """

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        create_tables(self._conn)

    def close(self) -> None:
        self._conn.close()

    def claim_due(self, now: float, *, claim_seconds: float, limit: int) -> list[Delivery]:
        """Take up to `limit` due deliveries, pushing their due time past the attempt so that a
        crashed sender's claim simply runs out and the delivery is tried again."""
        # The sender is woken by every job change, and most find nothing due: asking first with a
        # read keeps those wake-ups from taking the write lock a worker may be holding.
        due = [
            row[0]
            for row in self._conn.execute(
                "SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            )
        ]
        if not due:
            return []
        rows = self._conn.execute(
            f"UPDATE webhook_deliveries SET next_attempt_at = ?, claimed = 1 WHERE id IN ({','.join('?' * len(due))})"
            " AND state = 'pending' AND next_attempt_at <= ? RETURNING *",
            (now + claim_seconds, *due, now),
        ).fetchall()
        claimed = {row["id"]: row for row in rows}
        return [delivery_from_record(claimed[delivery_id]) for delivery_id in due if delivery_id in claimed]

    def release_claims(self, now: float) -> int:
        """Make deliveries a dead sender had in flight due at once (call before sending starts)."""
        cursor = self._conn.execute(
            "UPDATE webhook_deliveries SET claimed = 0, next_attempt_at = ? WHERE claimed = 1 AND state = 'pending'",
            (now,),
        )
        return cursor.rowcount

    def next_due_at(self) -> float | None:
        row = self._conn.execute(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending'"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def record_attempt(
        self,
        delivery_id: str,
        attempt: AttemptRecord,
        *,
        state: DeliveryState,
        next_attempt_at: float | None,
    ) -> None:
        """Store one attempt and the delivery's new state in one transaction."""
        finished_at = None if state is DeliveryState.PENDING else attempt.started_at + attempt.latency_ms / 1000
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, state = ?, next_attempt_at = ?,"
                " finished_at = ?, last_error = ?, claimed = 0 WHERE id = ?",
                (state.value, next_attempt_at, finished_at, attempt.error, delivery_id),
            )
            self._insert_attempt(delivery_id, attempt)

    def _insert_attempt(self, delivery_id: str, attempt: AttemptRecord) -> None:
        """Append an attempt, numbered after every earlier one (scheduled or replayed)."""
        (number,) = self._conn.execute(
            "SELECT COALESCE(MAX(attempt), 0) + 1 FROM webhook_attempts WHERE delivery_id = ?", (delivery_id,)
        ).fetchone()
        self._conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms,"
            " error, response_head, replay) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                delivery_id,
                number,
                attempt.started_at,
                attempt.status_code,
                attempt.latency_ms,
                attempt.error,
                attempt.response_head,
                int(attempt.replay),
            ),
        )

    def record_replay(self, delivery_id: str, attempt: AttemptRecord, *, delivered: bool) -> None:
        """Store a hand-triggered attempt. It leaves the retry schedule alone; success marks delivered."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._insert_attempt(delivery_id, attempt)
            if delivered:
                self._conn.execute(
                    "UPDATE webhook_deliveries SET state = 'delivered', next_attempt_at = NULL, finished_at = ?,"
                    " last_error = NULL WHERE id = ?",
                    (attempt.started_at + attempt.latency_ms / 1000, delivery_id),
                )

    def get(self, delivery_id: str) -> Delivery | None:
        row = self._conn.execute("SELECT * FROM webhook_deliveries WHERE id = ?", (delivery_id,)).fetchone()
        return None if row is None else delivery_from_record(row)

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        rows = self._conn.execute(
            "SELECT * FROM webhook_attempts WHERE delivery_id = ? ORDER BY attempt", (delivery_id,)
        ).fetchall()
        return [
            AttemptRecord(
                started_at=row["started_at"],
                latency_ms=row["latency_ms"],
                status_code=row["status_code"],
                error=row["error"],
                response_head=row["response_head"],
                replay=bool(row["replay"]),
            )
            for row in rows
        ]

    def final_for_subjects(self, subjects: Sequence[str]) -> dict[str, Delivery]:
        """Each subject's newest retried delivery (the event that ends it), by subject; progress events,
        sent once and never retried, are left out."""
        if not subjects:
            return {}
        placeholders = ",".join("?" for _ in subjects)
        rows = self._conn.execute(
            f"SELECT * FROM webhook_deliveries WHERE single_attempt = 0 AND subject IN ({placeholders})"
            " ORDER BY created_at",
            list(subjects),
        ).fetchall()
        return {row["subject"]: delivery_from_record(row) for row in rows}

    def for_subject(self, subject: str) -> list[Delivery]:
        rows = self._conn.execute(
            "SELECT * FROM webhook_deliveries WHERE subject = ? ORDER BY created_at", (subject,)
        ).fetchall()
        return [delivery_from_record(row) for row in rows]
