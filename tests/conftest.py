"""Fixtures shared by the unit and the integration tests."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from tests.postgres import PostgresCluster

# PostgreSQL truncates identifiers past 63 bytes.
MAX_DATABASE_NAME = 63


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server per test session, started by the first test that needs it."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh empty database for one test: its postgresql:// URL. Dropped afterwards."""
    suffix = f"_{uuid.uuid4().hex[:8]}"
    # The test's name makes a leftover database (or a server log line) easy to place.
    stem = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower()).strip("_")
    name = "t_" + stem[: MAX_DATABASE_NAME - 2 - len(suffix)] + suffix
    url = postgres_cluster.create_database(name)
    yield url
    postgres_cluster.drop_database(name)
