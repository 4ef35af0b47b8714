"""Retention: outputs and uploads older than HIDREAM_OUTPUT_TTL_HOURS are removed, so the disk does
not fill. The job rows stay and say when their files expired (the file URL then answers 404 saying
so). With several nodes on one database, one node at a time does the sweep (a chore lease in the
database), over the outputs directory they share.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hidream_service.db.engine import Database
from hidream_service.jobs.store import SqlJobStore

log = logging.getLogger(__name__)

CHORE = "retention"
MARK_BATCH = 500


@dataclass(frozen=True)
class Swept:
    jobs: int  # job rows newly marked as having lost their files
    directories: int  # output, upload and input directories removed


def claim_chore(db: Database, name: str, holder: str, now: float, hold_seconds: float) -> bool:
    """Whether `holder` may do the chore now: nobody holds it, the holder's hold ran out, or it is its own."""
    with db.write() as tx:
        row = tx.row(
            "INSERT INTO chores (name, holder, until) VALUES (:name, :holder, :until) ON CONFLICT (name)"
            " DO UPDATE SET holder = excluded.holder, until = excluded.until"
            " WHERE chores.until < :now OR chores.holder = :holder RETURNING name",
            {"name": name, "holder": holder, "until": now + hold_seconds, "now": now},
        )
    return row is not None


class RetentionSweep:
    def __init__(self, store: SqlJobStore, root: Path, *, ttl_hours: float, holder: str) -> None:
        self._store = store
        self._root = root
        self._ttl = ttl_hours * 3600
        self._holder = holder

    @property
    def interval_seconds(self) -> float:
        """How often to sweep: a quarter of the TTL, at most every ten minutes, at least every minute."""
        return min(max(self._ttl / 4, 60.0), 600.0)

    def run_once(self, now: float | None = None) -> Swept | None:
        """One sweep, or None when another node holds the chore (or retention is off)."""
        if self._ttl <= 0:
            return None
        now = time.time() if now is None else now
        if not claim_chore(self._store.db, CHORE, self._holder, now, hold_seconds=2 * self.interval_seconds):
            return None
        cutoff = now - self._ttl
        marked = 0
        while batch := self._store.expire_files(cutoff, now, MARK_BATCH):
            marked += len(batch)
            if len(batch) < MARK_BATCH:
                break
        removed = sum(self._remove_if_older(directory, cutoff) for directory in self._directories())
        if marked or removed:
            log.info("retention: %d job(s) expired, %d director(y/ies) of files removed", marked, removed)
        return Swept(marked, removed)

    def _directories(self) -> list[Path]:
        if not self._root.is_dir():
            return []
        return [entry for entry in self._root.iterdir() if entry.is_dir()]

    @staticmethod
    def _remove_if_older(directory: Path, cutoff: float) -> bool:
        """Remove a key's directory (one job's outputs, one upload, one stored input) once its newest
        file is older than `cutoff`."""
        try:
            newest = max((entry.stat().st_mtime for entry in directory.iterdir()), default=directory.stat().st_mtime)
        except FileNotFoundError:
            return False  # another sweep (or a rerun of the job) got there first
        if newest >= cutoff:
            return False
        shutil.rmtree(directory, ignore_errors=True)
        return True
