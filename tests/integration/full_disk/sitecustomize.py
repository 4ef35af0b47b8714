"""Test-only: SQLite databases that fill up on demand, in every process of a server under test.

A server started with this directory on PYTHONPATH and FULL_DISK_CONTROL naming a file imports this
module at start-up, and so does each worker process it spawns. Before each write transaction a
connection reads the file: while it holds a page count, the database may not grow past it
(`PRAGMA max_page_count`), so SQLite itself answers "database or disk is full" to any write that needs
a new page; while it is empty or absent, the database may grow again.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

CONTROL = os.environ.get("FULL_DISK_CONTROL")


class FillableConnection(sqlite3.Connection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unlimited = super().execute("PRAGMA max_page_count").fetchone()[0]

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("BEGIN") and CONTROL is not None:
            try:
                with open(CONTROL) as control:
                    limit = control.read().strip()
            except FileNotFoundError:
                limit = ""
            # A limit below the current size holds it at its current size.
            super().execute(f"PRAGMA max_page_count = {int(limit) if limit else self.unlimited}")
        return super().execute(sql, *args)


def _connect(*args: Any, factory: type[sqlite3.Connection] = FillableConnection, **kwargs: Any) -> sqlite3.Connection:
    return _sqlite_connect(*args, factory=factory, **kwargs)


if CONTROL is not None:
    _sqlite_connect = sqlite3.connect
    sqlite3.connect = _connect
