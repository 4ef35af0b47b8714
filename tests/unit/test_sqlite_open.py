"""Opening a new SQLite data dir while another connection writes to it waits for the lock, as every
other statement does, instead of failing at once (SQLite answers a journal-mode switch with "locked"
without waiting: a server and a second process starting on a new data dir hit it)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from hidream_service.db.engine import Database, configure_sqlite
from hidream_service.db.schema import LATEST, migrate


def test_a_new_data_dir_opened_during_another_s_write_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "hidream.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE made_by_another_process (x)")  # the file is new: still in rollback mode
    threading.Timer(0.3, lambda: writer.execute("COMMIT")).start()

    applied = migrate(Database(f"sqlite:///{path}", synchronous="NORMAL"))

    assert applied[-1] == LATEST
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_in_memory_database_opens_without_wal() -> None:
    connection = sqlite3.connect(":memory:", isolation_level=None)

    configure_sqlite(connection, "NORMAL")  # returns: memory databases cannot switch, and need not

    assert connection.execute("PRAGMA journal_mode").fetchone() == ("memory",)
