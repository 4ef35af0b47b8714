"""A write refused for want of room: the disk, a quota or the database is full.

Each place the service writes says so in its own way (SQLite's SQLITE_FULL, Postgres's disk_full,
ENOSPC or EDQUOT from a file write); `is_storage_full` knows them all, so that the API answers 507
Insufficient Storage instead of 500 and the worker pool can say why no worker runs.
"""

from __future__ import annotations

import errno
import sqlite3

import psycopg.errors

#: What a client is told with a 507: nothing of its request was kept, and it may try again.
STORAGE_FULL_MESSAGE = "the server's storage is full, so nothing of this request was saved; try again later"

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_storage_full(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised while handling (a ROLLBACK that failed after the
    write, a driver error wrapped by SQLAlchemy), is a write refused for want of room."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.Error) and _primary_code(current) == sqlite3.SQLITE_FULL:
            return True
        if isinstance(current, psycopg.errors.DiskFull):
            return True
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def _primary_code(error: sqlite3.Error) -> int | None:
    """SQLite's primary result code (an extended code's low byte); None for an error raised by Python."""
    code: int | None = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF
