"""Compare-and-set on a modal.Dict, which has no transactions.

modal.Dict offers one atomic primitive: `put(key, value, skip_if_exists=True)`, which writes only
if the key is absent and says whether it did. Two structures are built on it:

- `VersionedRecords`: a record is an append-only chain of versions `<key>#1`, `<key>#2`, ... Moving
  a record from version n to n+1 is a put-if-absent of `<key>#<n+1>`: of two writers that read
  version n, exactly one wins, and the loser re-reads and decides again. That is compare-and-set.
  A `<key>#head` entry caches the latest version to save reads; it may lag (last writer wins), so
  readers always probe forward from it.
- `AppendOnlyLog`: entries `<key>#0`, `<key>#1`, ... appended by put-if-absent at the first free
  index, so any number of writers can append without losing an entry.

Values are plain data (dicts, lists, str, bytes, numbers), never pickled classes, so a new
deployment reads what an older one wrote.

Limits: reads cost a round trip each (a read of the latest version is two: the head and a probe);
old versions are not deleted, and like every Dict entry vanish after 7 days untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

HEAD = "head"


class KeyValueStore(Protocol):
    """The part of modal.Dict's API used here (an in-process stand-in implements it in the tests)."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...

    def pop(self, key: Any, default: Any = None) -> Any: ...

    def contains(self, key: Any) -> bool: ...

    def items(self) -> Iterator[tuple[Any, Any]]: ...


Record = dict[str, Any]


class VersionedRecords:
    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    def create(self, key: str, record: Record) -> bool:
        """Write version 1; False if the record already exists."""
        if not self._store.put(f"{key}#1", record, skip_if_exists=True):
            return False
        self._store.put(f"{key}#{HEAD}", [1, record])
        return True

    def latest(self, key: str) -> tuple[int, Record] | None:
        head = self._store.get(f"{key}#{HEAD}")
        version, record = (0, None) if head is None else (int(head[0]), head[1])
        while True:
            newer = self._store.get(f"{key}#{version + 1}")
            if newer is None:
                break
            version, record = version + 1, newer
        if record is None:
            # No head yet (its writer is between the two puts of `create`), or no record at all.
            return None
        return version, record

    def get(self, key: str) -> Record | None:
        found = self.latest(key)
        return None if found is None else found[1]

    def update(self, key: str, change: Callable[[Record], Record | None]) -> Record | None:
        """Compare-and-set: apply `change` to the latest version and write the result as the next one.

        `change` returns None when the record is not in a state it may change (the precondition
        failed); then nothing is written and None is returned. Losing a race re-reads and asks
        `change` again, so it must be a pure function of the record it is given.
        """
        while True:
            found = self.latest(key)
            if found is None:
                return None
            version, current = found
            updated = change(current)
            if updated is None:
                return None
            if self._store.put(f"{key}#{version + 1}", updated, skip_if_exists=True):
                self._store.put(f"{key}#{HEAD}", [version + 1, updated])
                return updated


class AppendOnlyLog:
    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    def append(self, key: str, entry: Any) -> int:
        """Append at the first free index; returns it."""
        index = int(self._store.get(f"{key}#{HEAD}", 0))
        while not self._store.put(f"{key}#{index}", entry, skip_if_exists=True):
            index += 1
        self._store.put(f"{key}#{HEAD}", index + 1)
        return index

    def read(self, key: str) -> list[Any]:
        entries: list[Any] = []
        while (entry := self._store.get(f"{key}#{len(entries)}")) is not None:
            entries.append(entry)
        return entries
