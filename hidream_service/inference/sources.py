"""Where a weights folder comes from: a Hugging Face repository, at a commit.

A revision is a 40-character commit sha, never a branch: the same deployment must load the same
bytes next month. A source pins one in code when a trusted record of it exists (`revision=`);
otherwise (`revision=None`) the first download resolves the repository's current commit and writes
it to the weights root's lock file (lock.py), and every later download and load keeps to it. Each
model family declares its sources beside its endpoints (hidream_service/models/).

Directory names are the layout of docs/weights.md, so `hidream serve --weights DIR` and the Modal
GPU containers load the same tree.
"""

from __future__ import annotations

import re
from dataclasses import KW_ONLY, dataclass

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


def is_commit_sha(revision: str) -> bool:
    return bool(_COMMIT_SHA.match(revision))


@dataclass(frozen=True)
class WeightSource:
    repo: str
    directory: str  # under the weights root
    _: KW_ONLY
    revision: str | None = None  # a commit sha pinned in code; None: resolved once, then locked
    allow_patterns: tuple[str, ...] | None = None  # None: every file of the repository
    gated: bool = False  # needs a Hugging Face token that was granted access

    def __post_init__(self) -> None:
        if self.revision is not None and not is_commit_sha(self.revision):
            raise ValueError(f"{self.repo}: a pinned revision is a 40-character commit sha, not {self.revision!r}")

    @property
    def pinned(self) -> bool:
        return self.revision is not None
