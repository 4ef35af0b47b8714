"""Nodes on one Postgres hear each other's changes (LISTEN/NOTIFY): only what another node
committed, and again after the listening connection is dropped (with a resync for what was missed)."""

from __future__ import annotations

import queue

import psycopg

from hidream_service.db.engine import Database, Notice
from hidream_service.db.listener import ClusterListener, NoticeHandlers


def test_other_nodes_commits_are_heard_and_a_dropped_connection_listens_again(postgres_url: str) -> None:
    heard: queue.Queue[str] = queue.Queue()
    handlers = NoticeHandlers(
        queued=lambda: heard.put("queued"),
        changed=lambda job_id: heard.put(f"changed {job_id}"),
        moved=lambda: heard.put("moved"),
        delivery_due=lambda: heard.put("delivery"),
        keys=lambda: heard.put("keys"),
        resync=lambda: heard.put("resync"),
    )
    listener = ClusterListener(postgres_url, "node-a", handlers)
    listener.start()
    own, other = Database(postgres_url, node="node-a"), Database(postgres_url, node="node-b")
    try:
        with own.write() as tx:
            own.notify(tx, Notice.QUEUED)  # this node's own change: it knew already
        try:
            with other.write() as tx:
                other.notify(tx, Notice.KEYS)
                raise RuntimeError("rolled back: nothing was committed, nothing is told")
        except RuntimeError:
            pass
        with other.write() as tx:
            other.notify(tx, Notice.CHANGED, "job-1")
            other.notify(tx, Notice.DELIVERY_DUE)
        assert [heard.get(timeout=10) for _ in range(2)] == ["changed job-1", "delivery"]

        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN hidream'")
        assert heard.get(timeout=15) == "resync"
        with other.write() as tx:
            other.notify(tx, Notice.MOVED)
        assert heard.get(timeout=10) == "moved"
        assert heard.empty()
    finally:
        listener.stop()
        own.close()
        other.close()
