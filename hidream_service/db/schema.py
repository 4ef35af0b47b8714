"""The schema as a numbered list of migrations, recorded in the database as they are applied.

Every server runs `migrate` at start-up, under a lock (Postgres: an advisory lock; SQLite: the write
lock), in one transaction: a data dir or a Postgres database made by any earlier release upgrades in
place, all at once or not at all, and nodes starting together upgrade it once.

Migration 1 is the first release's layout (a data dir made by it has these tables but no record of
migrations). Later ones change it; none is ever edited once released.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    inspect,
    text,
)

from hidream_service.db.engine import Database

#: Postgres advisory lock key held while migrating ("hidream" in ASCII).
MIGRATION_LOCK = 0x68696472656D


def _seq() -> Column[int]:
    # BIGINT on Postgres; on SQLite the rowid alias (INTEGER PRIMARY KEY AUTOINCREMENT), never reused.
    return Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)


def _release_1(conn: Connection, db: Database) -> None:
    """The first release's tables (created only where missing) and the columns it added in place."""
    metadata = MetaData()
    Table(
        "jobs",
        metadata,
        _seq(),
        Column("id", Text, nullable=False, unique=True),
        Column("endpoint", Text, nullable=False),
        Column("owner", Text, nullable=False),
        Column("dialect", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("input", Text, nullable=False),
        Column("webhook_url", Text),
        Column("base_url", Text, nullable=False),
        Column("idempotency_key", Text),
        Column("request_hash", Text, nullable=False),
        Column("created_at", Double, nullable=False),
        Column("started_at", Double),
        Column("completed_at", Double),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("lease_token", Text),
        Column("lease_expires_at", Double),
        Column("cancel_requested", Integer, nullable=False, server_default="0"),
        Column("result", Text),
        Column("error", Text),
        Column("error_type", Text),
        Column("error_detail", Text),
        Column("inference_time", Double),
        Column("client_input", Text),
        Column("webhook_events", Text, nullable=False, server_default=""),
        Column("progress_step", Integer),
        Column("progress_total", Integer),
        Index("jobs_idempotency", "owner", "idempotency_key", unique=True),
        Index("jobs_by_status", "status", "seq"),
        Index("jobs_by_owner", "owner", "seq"),
        sqlite_autoincrement=True,
    )
    Table(
        "job_logs",
        metadata,
        _seq(),
        Column("job_id", Text, nullable=False),
        Column("timestamp", Double, nullable=False),
        Column("level", Text, nullable=False),
        Column("message", Text, nullable=False),
        Index("job_logs_by_job", "job_id", "seq"),
        sqlite_autoincrement=True,
    )
    Table(
        "webhook_deliveries",
        metadata,
        Column("id", Text, primary_key=True),
        Column("url", Text, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("signer", Text, nullable=False),
        Column("context", Text, nullable=False, server_default=""),
        Column("subject", Text, nullable=False, server_default=""),
        Column("state", Text, nullable=False, server_default="pending"),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("next_attempt_at", Double),
        Column("claimed", Integer, nullable=False, server_default="0"),
        Column("single_attempt", Integer, nullable=False, server_default="0"),
        Column("created_at", Double, nullable=False),
        Column("finished_at", Double),
        Column("last_error", Text),
        Index("webhook_deliveries_due", "state", "next_attempt_at"),
        Index("webhook_deliveries_subject", "subject"),
    )
    Table(
        "webhook_attempts",
        metadata,
        Column("delivery_id", Text, nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("started_at", Double, nullable=False),
        Column("status_code", Integer),
        Column("latency_ms", Double, nullable=False),
        Column("error", Text),
        Column("response_head", Text),
        Column("replay", Integer, nullable=False, server_default="0"),
        PrimaryKeyConstraint("delivery_id", "attempt"),
    )
    metadata.create_all(conn, checkfirst=True)
    present = {column["name"] for column in inspect(conn).get_columns("jobs")}
    for name in ("progress_step", "progress_total"):  # added in place by a late first-release build
        if name not in present:
            conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} INTEGER"))


#: The job fields the first layout kept in columns of their own, now in the record's document.
_MOVED_TO_DOCUMENT = (
    "input",
    "webhook_url",
    "base_url",
    "client_input",
    "webhook_events",
    "result",
    "error",
    "error_type",
    "error_detail",
    "inference_time",
)


def _record_as_document(conn: Connection, db: Database) -> None:
    """One JSON document per job for everything no query filters on; columns stay for what does
    (status, queue order, owner, idempotency key, lease, times). Adding a field to the job no
    longer needs a migration. Also: the shared state of several nodes."""
    conn.execute(text("ALTER TABLE jobs ADD COLUMN doc TEXT NOT NULL DEFAULT '{}'"))
    conn.execute(text(f"ALTER TABLE jobs ADD COLUMN files_expired_at {_double(db)}"))
    rows = conn.execute(text(f"SELECT id, {', '.join(_MOVED_TO_DOCUMENT)} FROM jobs")).mappings().all()
    documents = [{"id": row["id"], "doc": json.dumps(_document_of(row), separators=(",", ":"))} for row in rows]
    if documents:
        conn.execute(text("UPDATE jobs SET doc = :doc WHERE id = :id"), documents)
    for name in _MOVED_TO_DOCUMENT:
        conn.execute(text(f"ALTER TABLE jobs DROP COLUMN {name}"))
    conn.execute(text("CREATE INDEX jobs_by_completion ON jobs (completed_at)"))  # the retention sweep's

    # Which node has a delivery in flight: a restarted node releases its own claims, not another's.
    conn.execute(text("ALTER TABLE webhook_deliveries ADD COLUMN claimed_by TEXT"))
    conn.execute(
        text("UPDATE webhook_deliveries SET next_attempt_at = :now WHERE claimed = 1 AND state = 'pending'"),
        {"now": time.time()},
    )
    conn.execute(text("ALTER TABLE webhook_deliveries DROP COLUMN claimed"))

    # Named values every node shares (the webhook signing keys), and who runs each periodic chore.
    conn.execute(text("CREATE TABLE shared_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)"))
    conn.execute(
        text(f"CREATE TABLE chores (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until {_double(db)} NOT NULL)")
    )


def _document_of(row: object) -> dict[str, object]:
    values = dict(row)  # type: ignore[call-overload]
    document: dict[str, object] = {
        "input": json.loads(values["input"]),
        "webhook_url": values["webhook_url"],
        "base_url": values["base_url"],
        "client_input": _json_or_none(values["client_input"]),
        "webhook_events": [event for event in (values["webhook_events"] or "").split(",") if event],
        "result": _json_or_none(values["result"]),
        "error": values["error"],
        "error_type": values["error_type"],
        "error_detail": _json_or_none(values["error_detail"]),
        "inference_time": values["inference_time"],
    }
    return document


def _json_or_none(value: str | None) -> object:
    return None if value is None else json.loads(value)


def _double(db: Database) -> str:
    return "DOUBLE PRECISION" if db.is_postgres else "REAL"


def _spawned_calls(conn: Connection, db: Database) -> None:
    """Executors that hand each job to a call of their own (Modal's spawn) keep the call's id here,
    and when a running job's cancel was asked (the sweeper escalates one not honoured in time)."""
    conn.execute(
        text(
            "CREATE TABLE spawned_calls (job_id TEXT PRIMARY KEY, call_id TEXT NOT NULL,"
            f" spawned_at {_double(db)} NOT NULL, cancel_requested_at {_double(db)})"
        )
    )


def _fair_queue(conn: Connection, db: Database) -> None:
    """What the fair queue asks on every lease and submit (jobs/store.py): each key's queued jobs in
    order (a partial index: only queued rows, so it stays small however long the history), and when
    each key was last served (the latest start of its jobs)."""
    conn.execute(text("CREATE INDEX jobs_queued_by_owner ON jobs (owner, seq) WHERE status = 'IN_QUEUE'"))
    # Partial too, so that the planner never takes it for counting a key's queued jobs (none started).
    conn.execute(text("CREATE INDEX jobs_started_by_owner ON jobs (owner, started_at) WHERE started_at IS NOT NULL"))


def _previews(conn: Connection, db: Database) -> None:
    """The latest preview of each running job, apart from its row: a few KiB that only the streams
    read, rewritten every few steps, and deleted when the job ends."""
    conn.execute(
        text("CREATE TABLE job_previews (job_id TEXT PRIMARY KEY, step INTEGER NOT NULL, image TEXT NOT NULL)")
    )


MIGRATIONS: tuple[tuple[int, str, Callable[[Connection, Database], None]], ...] = (
    (1, "first release", _release_1),
    (2, "job record as a document; several nodes", _record_as_document),
    (3, "spawned calls", _spawned_calls),
    (4, "a fair queue between API keys", _fair_queue),
    (5, "previews of forming images", _previews),
)
LATEST = MIGRATIONS[-1][0]


def applied_versions(conn: Connection) -> set[int]:
    if not inspect(conn).has_table("schema_migrations"):
        return set()
    return {row[0] for row in conn.execute(text("SELECT version FROM schema_migrations"))}


def migrate(db: Database) -> list[int]:
    """Bring the database to the latest schema; returns the versions applied now."""
    applied_now: list[int] = []
    with db.schema() as conn:
        if db.is_postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                f" applied_at {_double(db)} NOT NULL)"
            )
        )
        done = applied_versions(conn)
        if done and max(done) > LATEST:
            raise RuntimeError(
                f"the database is at schema version {max(done)}, newer than this release knows ({LATEST}):"
                " run the newer release, or restore a backup made before it"
            )
        for version, name, step in MIGRATIONS:
            if version in done:
                continue
            step(conn, db)
            conn.execute(
                text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
                {"v": version, "n": name, "t": time.time()},
            )
            applied_now.append(version)
    return applied_now
