"""The webhook outbox: every delivery and its attempts, persisted in SQL (SQLite or Postgres).

A delivery row is written with `enqueue` inside the caller's own transaction (the one that ends the
job), so a job can never end without its webhook being on record. Delivery itself happens later,
elsewhere, from `SqlOutbox` (or any other `Outbox`, such as one kept in a modal.Dict). With several
nodes on one database, each due delivery is claimed by one node at a time (SKIP LOCKED), and a
claim names its node, so that a restarted node releases its own claims and no other's.

The tables are created by the service's migrations (hidream_service/db/schema.py).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
class Backlog:
    """Pending deliveries: those due now, those already tried at least once, and when the oldest was made."""

    due: int
    retrying: int
    oldest_created_at: float | None


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

    def claim_due(
        self,
        now: float,
        *,
        claim_seconds: float,
        limit: int,
        accept: Callable[[str], bool] | None = None,
        window: int | None = None,
        skip_prefixes: Sequence[str] = (),
    ) -> list[Delivery]:
        """Take up to `limit` due deliveries; a claim that is never recorded runs out after `claim_seconds`.

        A sender that limits its attempts per destination passes over the URLs beginning (lowercased)
        with one of `skip_prefixes`, and is asked `accept(url)` for each of the first `window` due
        deliveries, oldest first: those it refuses stay due and unclaimed."""

    def release_claims(self, now: float) -> int:
        """Make deliveries a dead sender had in flight due at once."""

    def next_due_at(self, *, skip_prefixes: Sequence[str] = ()) -> float | None:
        """When the next delivery is due, passing over the URLs beginning with one of `skip_prefixes`."""

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


class SqlTransaction(Protocol):
    """Statements on one connection, `:name` parameters (hidream_service/db/engine.py's `Tx`)."""

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int: ...

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]: ...

    def row(self, sql: str, params: Mapping[str, Any] | None = None) -> Any | None: ...

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any: ...


class SqlDatabase(Protocol):
    """What the outbox needs of the service's database handle (hidream_service/db/engine.py)."""

    skip_locked: str  # " FOR UPDATE SKIP LOCKED" where rows can be locked, else ""
    lock_row: str

    def read(self) -> contextlib.AbstractContextManager[SqlTransaction]: ...

    def write(self) -> contextlib.AbstractContextManager[SqlTransaction]: ...

    def close(self) -> None: ...


def _skipping(prefixes: Sequence[str]) -> tuple[str, dict[str, str]]:
    """A condition passing over the URLs that begin with one of `prefixes` (already lowercased), and
    its parameters. `!` escapes LIKE's wildcards, which host names may hold (`_`)."""
    params = {
        f"skip_{n}": prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        for n, prefix in enumerate(prefixes)
    }
    return "".join(f" AND lower(url) NOT LIKE :{name} ESCAPE '!'" for name in params), params


def storable(text: str) -> bool:
    """Whether a text can be stored as a key: Postgres text cannot hold NUL, so no row has a key
    with one, on either engine; a lookup by such a key finds nothing instead of failing."""
    return "\x00" not in text


def enqueue(tx: SqlTransaction, message: OutboxMessage, due_at: float) -> None:
    """Record a delivery inside the caller's transaction. Enqueuing the same id twice is a no-op,
    so a job that runs twice still sends one event, with the body first written."""
    tx.run(
        "INSERT INTO webhook_deliveries (id, url, body, signer, context, subject, single_attempt,"
        " next_attempt_at, created_at) VALUES (:id, :url, :body, :signer, :context, :subject, :single,"
        " :due, :due) ON CONFLICT (id) DO NOTHING",
        {
            "id": message.id,
            "url": message.url,
            "body": message.body,
            "signer": message.signer,
            "context": message.context,
            "subject": message.subject,
            "single": int(message.single_attempt),
            "due": due_at,
        },
    )


def delivery_from_record(record: Mapping[Any, Any]) -> Delivery:
    """A Delivery from its stored columns: a SQL row here, a record in any other outbox."""
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


class SqlOutbox:
    """The delivery side of the outbox: claim due deliveries, record what each attempt did.

    `holder` names this node in its claims. On SQLite the outbox's own connections commit without
    forcing the disk (`synchronous=NORMAL`): what a power cut can undo here is a claim or an attempt
    record, and either only means the event is sent again with the same webhook-id, which
    receivers already deduplicate. The deliveries themselves are enqueued durably, in the job's own
    transaction.
    """

    def __init__(self, db: SqlDatabase, *, holder: str = "") -> None:
        self._db = db
        self._holder = holder

    def close(self) -> None:
        self._db.close()

    def claim_due(
        self,
        now: float,
        *,
        claim_seconds: float,
        limit: int,
        accept: Callable[[str], bool] | None = None,
        window: int | None = None,
        skip_prefixes: Sequence[str] = (),
    ) -> list[Delivery]:
        """Take up to `limit` due deliveries, pushing their due time past the attempt so that a
        crashed sender's claim simply runs out and the delivery is tried again. (`accept`, `window`
        and `skip_prefixes`: see `Outbox.claim_due`.)"""
        skipping, params = _skipping(skip_prefixes)
        # The sender is woken by every job change, and most find nothing due: asking first with a
        # read keeps those wake-ups from taking the write lock a worker may be holding.
        with self._db.read() as tx:
            rows = tx.rows(
                "SELECT id, url FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= :now"
                f"{skipping} ORDER BY next_attempt_at LIMIT :limit",
                {"now": now, "limit": max(window or limit, limit), **params},
            )
        due: list[str] = []
        for row in rows:
            if len(due) == limit:
                break
            if accept is None or accept(row["url"]):
                due.append(row["id"])
        if not due:
            return []
        with self._db.write() as tx:
            rows = tx.rows(
                "UPDATE webhook_deliveries SET next_attempt_at = :until, claimed_by = :holder WHERE id IN ("
                "SELECT id FROM webhook_deliveries WHERE id IN :ids AND state = 'pending' AND next_attempt_at <= :now"
                f"{self._db.skip_locked}) RETURNING *",
                {"until": now + claim_seconds, "holder": self._holder, "ids": due, "now": now},
            )
        claimed = {row["id"]: delivery_from_record(row) for row in rows}
        return [claimed[delivery_id] for delivery_id in due if delivery_id in claimed]

    def release_claims(self, now: float) -> int:
        """Make deliveries this node had in flight when it died due at once (call before sending
        starts). Other nodes' claims are theirs: a dead node's run out on their own."""
        with self._db.write() as tx:
            return tx.run(
                "UPDATE webhook_deliveries SET claimed_by = NULL, next_attempt_at = :now"
                " WHERE claimed_by = :holder AND state = 'pending'",
                {"now": now, "holder": self._holder},
            )

    def next_due_at(self, *, skip_prefixes: Sequence[str] = ()) -> float | None:
        skipping, params = _skipping(skip_prefixes)
        with self._db.read() as tx:
            due = tx.scalar(
                f"SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending'{skipping}", params
            )
        return None if due is None else float(due)

    def backlog(self, now: float) -> Backlog:
        """The pending deliveries, as the metrics report them."""
        with self._db.read() as tx:
            row = tx.row(
                "SELECT COALESCE(SUM(CASE WHEN next_attempt_at <= :now THEN 1 ELSE 0 END), 0) AS due,"
                " COALESCE(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0) AS retrying,"
                " MIN(created_at) AS oldest FROM webhook_deliveries WHERE state = 'pending'",
                {"now": now},
            )
        if row is None:
            return Backlog(0, 0, None)
        oldest = row["oldest"]
        return Backlog(int(row["due"]), int(row["retrying"]), None if oldest is None else float(oldest))

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
        with self._db.write() as tx:
            tx.run(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, state = :state, next_attempt_at = :next,"
                " finished_at = :finished, last_error = :error, claimed_by = NULL WHERE id = :id",
                {
                    "state": state.value,
                    "next": next_attempt_at,
                    "finished": finished_at,
                    "error": attempt.error,
                    "id": delivery_id,
                },
            )
            _insert_attempt(tx, delivery_id, attempt)

    def record_replay(self, delivery_id: str, attempt: AttemptRecord, *, delivered: bool) -> None:
        """Store a hand-triggered attempt. It leaves the retry schedule alone; success marks delivered."""
        with self._db.write() as tx:
            # The delivery's row lock numbers its attempts one at a time, whichever node records them.
            tx.run(f"SELECT id FROM webhook_deliveries WHERE id = :id{self._db.lock_row}", {"id": delivery_id})
            _insert_attempt(tx, delivery_id, attempt)
            if delivered:
                tx.run(
                    "UPDATE webhook_deliveries SET state = 'delivered', next_attempt_at = NULL,"
                    " finished_at = :finished, last_error = NULL WHERE id = :id",
                    {"finished": attempt.started_at + attempt.latency_ms / 1000, "id": delivery_id},
                )

    def get(self, delivery_id: str) -> Delivery | None:
        if not storable(delivery_id):
            return None
        with self._db.read() as tx:
            row = tx.row("SELECT * FROM webhook_deliveries WHERE id = :id", {"id": delivery_id})
        return None if row is None else delivery_from_record(row)

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        with self._db.read() as tx:
            rows = tx.rows(
                "SELECT * FROM webhook_attempts WHERE delivery_id = :id ORDER BY attempt", {"id": delivery_id}
            )
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
        with self._db.read() as tx:
            rows = tx.rows(
                "SELECT * FROM webhook_deliveries WHERE single_attempt = 0 AND subject IN :subjects"
                " ORDER BY created_at",
                {"subjects": list(subjects)},
            )
        return {row["subject"]: delivery_from_record(row) for row in rows}

    def for_subject(self, subject: str) -> list[Delivery]:
        with self._db.read() as tx:
            rows = tx.rows(
                "SELECT * FROM webhook_deliveries WHERE subject = :subject ORDER BY created_at", {"subject": subject}
            )
        return [delivery_from_record(row) for row in rows]


def _insert_attempt(tx: SqlTransaction, delivery_id: str, attempt: AttemptRecord) -> None:
    """Append an attempt, numbered after every earlier one (scheduled or replayed)."""
    number = tx.scalar(
        "SELECT COALESCE(MAX(attempt), 0) + 1 FROM webhook_attempts WHERE delivery_id = :id", {"id": delivery_id}
    )
    tx.run(
        "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, error,"
        " response_head, replay) VALUES (:id, :n, :started, :status, :latency, :error, :head, :replay)",
        {
            "id": delivery_id,
            "n": number,
            "started": attempt.started_at,
            "status": attempt.status_code,
            "latency": attempt.latency_ms,
            "error": attempt.error,
            "head": attempt.response_head,
            "replay": int(attempt.replay),
        },
    )
