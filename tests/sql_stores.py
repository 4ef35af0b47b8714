"""SQL stores for tests, on a migrated database: SQLite in a temporary file, or Postgres from the
`postgres_url` fixture (a throwaway cluster, see tests/postgres.py)."""

from __future__ import annotations

from hidream_service.db.engine import Database
from hidream_service.db.schema import migrate
from hidream_service.jobs.store import SqlJobStore
from webhooks.outbox import SqlOutbox

ENGINES = ("sqlite", "postgres")


def migrated(url: str, *, node: str = "") -> Database:
    db = Database(url, node=node)
    migrate(db)
    return db


def sql_store(url: str, *, node: str = "") -> SqlJobStore:
    return SqlJobStore(migrated(url, node=node))


def sql_outbox(url: str, *, holder: str = "") -> SqlOutbox:
    return SqlOutbox(migrated(url), holder=holder)
