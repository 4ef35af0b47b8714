"""The throwaway PostgreSQL server that the database tests run against."""

from __future__ import annotations

import psycopg


def test_postgres_url_is_a_fresh_writable_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE item (id integer PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO item (id, name) VALUES (%s, %s)", (1, "caf\u00e9"))
        assert conn.execute("SELECT id, name FROM item").fetchall() == [(1, "caf\u00e9")]
        version = conn.execute("SHOW server_version").fetchone()
    assert version is not None
    assert version[0][0].isdigit()
