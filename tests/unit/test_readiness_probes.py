"""The readiness probes on real stores and directories: they pass on a working one, leave nothing
behind, and fail, saying why, on one that refuses writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from hidream_service.api.health import outputs_problem, store_problem
from hidream_service.db.engine import Database
from tests.sql_stores import ENGINES, migrated


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_the_store_probe_passes_on_a_writable_store_and_keeps_nothing(database_url: str) -> None:
    db = migrated(database_url)
    try:
        assert store_problem(db) is None
        assert store_problem(db) is None
        with db.read() as tx:
            assert tx.scalar("SELECT COUNT(*) FROM chores") == 0
    finally:
        db.close()


def test_the_store_probe_fails_on_a_read_only_postgres(postgres_url: str) -> None:
    migrated(postgres_url).close()
    setup = Database(postgres_url)
    with setup.read() as tx:
        tx.run("ALTER DATABASE " + postgres_url.rsplit("/", 1)[1] + " SET default_transaction_read_only = on")
    setup.close()
    db = Database(postgres_url)  # new connections take the database's new default
    try:
        problem = store_problem(db)
    finally:
        db.close()

    assert problem is not None and "read-only" in problem


def test_the_outputs_probe_writes_a_file_and_removes_it(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"

    assert outputs_problem(outputs) is None
    assert list(outputs.iterdir()) == []


def test_the_outputs_probe_fails_where_no_file_can_be_made(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")

    problem = outputs_problem(tmp_path / "not-a-directory" / "outputs")

    assert problem is not None and problem.startswith("the outputs directory cannot be written")
