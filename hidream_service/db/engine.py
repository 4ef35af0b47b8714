"""One database handle for both engines.

The stores write their SQL once; SQLAlchemy Core pools the connections, translates the parameter
style and renders each engine's column types. What still differs sits here:

- row locks, so that workers on several nodes lease different jobs (FOR UPDATE SKIP LOCKED; SQLite
  has one writer at a time and needs none);
- wake-ups for the other nodes (NOTIFY, sent in the transaction that makes the change; SQLite has
  one node);
- SQLite's transaction modes: a write takes the write lock when it begins (BEGIN IMMEDIATE), so two
  writers never deadlock upgrading a read lock; a read runs each statement on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine, make_url

#: The Postgres channel every node listens on for the others' changes (see db/listener.py).
CHANNEL = "hidream"


class Notice:
    """What a change tells the other nodes."""

    QUEUED = "queued"  # a job wants running: wake an idle worker
    CHANGED = "changed"  # a job changed (its id follows): its watchers read it again
    MOVED = "moved"  # the queue moved: queued jobs' places changed
    KEYS = "keys"  # the webhook signing keys were rotated


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def driver_url(url: str) -> str:
    """`postgresql://` (what libpq and every Postgres host hands out) through psycopg 3."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.get_backend_name() != "sqlite":
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use postgresql://... or sqlite:///...")
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The URL as plain psycopg takes it (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Database:
    """An engine and the few engine differences. Each process makes its own (connections do not
    survive a fork), all of them on the same database."""

    def __init__(self, url: str, *, node: str = "", synchronous: str = "FULL", pool_size: int = 8) -> None:
        self.url = url
        self.node = node  # who sends this process's notices; a node ignores its own
        self.engine: Engine
        if make_url(url).get_backend_name() == "postgresql":
            self.is_postgres = True
            self.engine = create_engine(
                driver_url(url),
                pool_size=pool_size,
                max_overflow=2 * pool_size,
                pool_pre_ping=True,  # a restarted Postgres leaves dead connections in the pool
                pool_timeout=30,
                connect_args={"connect_timeout": 10},
            )
        else:
            self.is_postgres = False
            self.engine = _sqlite_engine(url, synchronous, pool_size)
        # Row locks: Postgres workers skip rows another node is leasing; SQLite writes one at a time.
        self.skip_locked = " FOR UPDATE SKIP LOCKED" if self.is_postgres else ""
        self.lock_row = " FOR UPDATE" if self.is_postgres else ""

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """Reads, each statement on its own (no BEGIN and COMMIT around them: two round trips fewer
        on Postgres, and SQLite readers never wait). A read of several statements may see a write
        land between them; every caller's reads tolerate that."""
        with self.engine.connect() as conn:
            if self.is_postgres:
                conn.execution_options(isolation_level="AUTOCOMMIT")
            else:
                conn.execution_options(hidream_read=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction, committed when the block ends (rolled back if it raises)."""
        with self.engine.connect() as conn:
            conn.execution_options(hidream_write=True)
            with conn.begin():
                yield conn

    def notify(self, conn: Connection, notice: str, job_id: str = "") -> None:
        """Tell the other nodes, when this transaction commits (Postgres delivers NOTIFY on commit)."""
        if self.is_postgres:
            conn.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": f"{self.node} {notice} {job_id}".rstrip()},
            )


def _sqlite_engine(url: str, synchronous: str, pool_size: int) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, pool_size=pool_size, max_overflow=2 * pool_size, connect_args={"timeout": 30, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun explicitly below; the driver's own implicit BEGIN would defer the
        # write lock to the first write and let two writers deadlock.
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute(f"PRAGMA synchronous={synchronous}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("hidream_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get("hidream_read"):
            conn.exec_driver_sql("BEGIN")

    return engine
