"""One database handle for both engines.

The stores write their SQL once, with `:name` parameters. SQLAlchemy parses the URL, pools the
Postgres connections, renders the schema's column types per engine (db/schema.py) and renders each
statement once into its driver's parameter style; the statements then run on the driver's own
connection (`Tx`). SQLAlchemy's per-execution machinery costs about 0.1 ms a statement here, more
than the statement itself, and a noop job makes about fifteen of them (docs/performance.md). SQLite
connections are one per thread, kept for the thread's life: opening one is cheap, a pool's checkout
and reset cost as much as the statement, and a thread's own connection keeps its cache warm.

What still differs between the engines sits here:
- row locks, so that workers on several nodes lease different jobs (FOR UPDATE SKIP LOCKED; SQLite
  has one writer at a time and needs none);
- wake-ups for the other nodes (NOTIFY, sent in the transaction that makes the change; SQLite has
  one node);
- SQLite's transaction modes: a write takes the write lock when it begins (BEGIN IMMEDIATE), so two
  writers never deadlock upgrading a read lock; a read runs each statement on its own.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine, make_url

#: The Postgres channel every node listens on for the others' changes (see db/listener.py).
CHANNEL = "hidream"
#: How long a SQLite statement waits for another connection's write lock.
SQLITE_BUSY_SECONDS = 30
#: A unique key or primary key already held (an Idempotency-Key, say), from either driver.
IntegrityError = (sqlite3.IntegrityError, psycopg.IntegrityError)


class Notice:
    """What a change tells the other nodes."""

    QUEUED = "queued"  # a job wants running: wake an idle worker
    CHANGED = "changed"  # a job changed (its id follows): its watchers read it again
    MOVED = "moved"  # the queue moved: queued jobs' places changed
    DELIVERY_DUE = "delivery"  # a webhook delivery was enqueued: a sender claims it
    KEYS = "keys"  # the webhook signing keys were rotated


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


class Tx:
    """Statements on one driver connection: inside one transaction for a write, each on its own for
    a read. Rows read by name (`row["status"]`)."""

    def __init__(self, db: Database, connection: Any) -> None:
        self._db = db
        self._connection = connection
        self.notices: list[str] = []  # told to the other nodes together, just before the commit

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Execute; the number of rows changed."""
        cursor = self._execute(sql, params)
        count: int = cursor.rowcount
        cursor.close()
        return count

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        cursor = self._execute(sql, params)
        rows: list[Any] = cursor.fetchall()
        cursor.close()
        return rows

    def row(self, sql: str, params: Mapping[str, Any] | None = None) -> Any | None:
        cursor = self._execute(sql, params)
        row = cursor.fetchone()
        cursor.close()
        return row

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None when there is no row."""
        row = self.row(sql, params)
        return None if row is None else next(iter(row.values())) if isinstance(row, dict) else row[0]

    def run_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        statement, names = self._db.rendered(sql, rows[0])
        cursor = self._cursor()
        cursor.executemany(statement, [_bound(names, row) for row in rows])
        cursor.close()

    def _execute(self, sql: str, params: Mapping[str, Any] | None) -> Any:
        values = dict(params or {})
        lists = {name: value for name, value in values.items() if isinstance(value, list | tuple)}
        if lists:
            sql, values = _expanded(sql, values, lists)
        statement, names = self._db.rendered(sql, values)
        cursor = self._cursor()
        cursor.execute(statement, _bound(names, values))
        return cursor

    def _cursor(self) -> Any:
        if self._db.is_postgres:
            return self._connection.cursor(row_factory=dict_row)
        cursor = self._connection.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor


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
                pool_timeout=30,
                pool_recycle=3600,
                pool_use_lifo=True,  # the connection used last is reused: its caches are warm
                pool_reset_on_return=None,  # every write commits or rolls back; reads run in autocommit
                connect_args={"connect_timeout": 10},
            )
        else:
            self.is_postgres = False
            self.engine = _sqlite_engine(url, synchronous, pool_size)
            self._sqlite_path = make_url(url).database or ":memory:"
            self._synchronous = synchronous
            self._local = threading.local()
            self._opened: list[sqlite3.Connection] = []
        # Row locks: Postgres workers skip rows another node is leasing; SQLite writes one at a time.
        self.skip_locked = " FOR UPDATE SKIP LOCKED" if self.is_postgres else ""
        self.lock_row = " FOR UPDATE" if self.is_postgres else ""
        # SQLite takes one writer at a time, and a second one waits in its busy handler, which
        # sleeps 1 ms, then 2, 5, 10...: this process's own writers queue here instead, handed on at
        # once. (Other processes' writers still meet the busy handler; Postgres locks rows.)
        self._writing: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if self.is_postgres else threading.Lock()
        )
        self._rendered: dict[str, tuple[str, list[str] | None]] = {}
        self._lock = threading.Lock()  # guards the statement cache and the list of open connections

    def close(self) -> None:
        if not self.is_postgres:
            with self._lock:
                opened, self._opened = self._opened, []
            for connection in opened:
                connection.close()
        self.engine.dispose()

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        """Reads, each statement on its own (no BEGIN and COMMIT around them: two round trips fewer
        on Postgres, and SQLite readers never wait). A read of several statements may see a write
        land between them; every caller's reads tolerate that."""
        with self._connection() as connection:
            if self.is_postgres:
                connection.autocommit = True
                try:
                    yield Tx(self, connection)
                finally:
                    connection.autocommit = False
            else:
                yield Tx(self, connection)

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        """One transaction, committed when the block ends (rolled back if it raises)."""
        with self._writing, self._connection() as connection:
            if not self.is_postgres:
                connection.execute("BEGIN IMMEDIATE")
            tx = Tx(self, connection)
            try:
                yield tx
                if tx.notices:  # one round trip for all of them
                    payloads = {f"p{index}": notice for index, notice in enumerate(tx.notices)}
                    tx.run("SELECT " + ", ".join(f"pg_notify('{CHANNEL}', :{name})" for name in payloads), payloads)
                connection.commit() if self.is_postgres else connection.execute("COMMIT")
            except BaseException:
                if self.is_postgres:
                    connection.rollback()
                elif connection.in_transaction:  # SQLite has already rolled back after some errors (a full disk)
                    connection.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def schema(self) -> Iterator[Connection]:
        """A SQLAlchemy connection in one write transaction, for the migrations' DDL."""
        with self.engine.connect() as conn:
            conn.execution_options(hidream_write=True)
            with conn.begin():
                yield conn

    def notify(self, tx: Tx, notice: str, job_id: str = "") -> None:
        """Tell the other nodes, when this transaction commits (Postgres delivers NOTIFY on commit)."""
        if self.is_postgres:
            tx.notices.append(f"{self.node} {notice} {job_id}".rstrip())

    def rendered(self, sql: str, params: Mapping[str, Any]) -> tuple[str, list[str] | None]:
        """The statement in the driver's parameter style (SQLAlchemy renders it, once per statement),
        and for a positional style the order of the parameter names."""
        found = self._rendered.get(sql)
        if found is None:
            compiled = text(sql).compile(dialect=self.engine.dialect)
            names = list(compiled.positiontup) if compiled.positiontup is not None else None
            found = (compiled.string, names)
            with self._lock:
                self._rendered[sql] = found
        return found

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """SQLite: this thread's connection. Postgres: one from the pool; one that broke (Postgres
        restarted) is thrown away."""
        if not self.is_postgres:
            yield self._thread_connection()
            return
        fairy = self.engine.raw_connection()
        try:
            yield fairy.driver_connection
        except psycopg.OperationalError:
            fairy.invalidate()
            raise
        finally:
            fairy.close()

    def _thread_connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # Transactions are begun explicitly (isolation_level=None): the driver's own implicit
            # BEGIN would defer the write lock to the first write and let two writers deadlock.
            connection = sqlite3.connect(
                self._sqlite_path, timeout=SQLITE_BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
            configure_sqlite(connection, self._synchronous)
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection


def _bound(names: list[str] | None, values: Mapping[str, Any]) -> Any:
    return values if names is None else [values[name] for name in names]


def _expanded(sql: str, values: dict[str, Any], lists: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`IN :ids` with a list becomes `IN (:ids_0, :ids_1, ...)`."""
    for name, items in lists.items():
        del values[name]
        names = [f"{name}_{index}" for index in range(len(items))]
        values.update(zip(names, items, strict=True))
        sql = re.sub(rf"(?<![:\w]):{name}\b", "(" + ", ".join(f":{n}" for n in names) + ")", sql)
    return sql, values


def configure_sqlite(connection: sqlite3.Connection, synchronous: str) -> None:
    """WAL and the durability setting, on every new connection.

    WAL is a property of the file, set once. Switching to it needs the file to itself, and SQLite
    answers "database is locked" at once rather than waiting out the busy timeout, so processes
    opening a new data dir together (a server and its workers, two nodes) retry here.
    """
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            # Answers the mode in force: an in-memory database stays "memory", and that is final.
            connection.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    connection.execute(f"PRAGMA synchronous={synchronous}")


def _sqlite_engine(url: str, synchronous: str, pool_size: int) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=2 * pool_size,
        pool_use_lifo=True,  # the connection used last is reused: its page and schema caches are warm
        connect_args={"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun explicitly; the driver's own implicit BEGIN would defer the write
        # lock to the first write and let two writers deadlock.
        dbapi_connection.isolation_level = None
        configure_sqlite(dbapi_connection, synchronous)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("hidream_write") else "BEGIN")

    return engine
