"""Where a weights folder comes from: a Hugging Face repository at a pinned revision.

A revision is a 40-character commit sha, never a branch: the same deployment must load the same
bytes next month. `UNPINNED` marks a revision nobody has looked up yet; `download_model` refuses it
before touching the network. Each model family declares its sources beside its endpoints
(hidream_service/models/); to pin one, take the commit sha from the repository's "Files and
versions" history (or `huggingface_hub.HfApi().model_info(repo).sha`) and set it there.

Directory names are the layout of docs/weights.md, so `hidream serve --weights DIR` and the Modal
GPU containers load the same tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNPINNED = "UNPINNED"
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


class UnpinnedRevision(Exception):
    """A source has no commit sha pinned; the message says where to set one."""


@dataclass(frozen=True)
class WeightSource:
    repo: str
    revision: str
    directory: str  # under the weights root
    allow_patterns: tuple[str, ...] | None = None  # None: every file of the repository
    gated: bool = False  # needs a Hugging Face token that was granted access

    @property
    def pinned(self) -> bool:
        return bool(_COMMIT_SHA.match(self.revision))

    def require_pinned(self) -> None:
        if not self.pinned:
            raise UnpinnedRevision(
                f"{self.repo} has no pinned revision ({self.revision!r}): set its *_REVISION constant in its "
                "family's module under hidream_service/models/ to a 40-character commit sha before downloading"
            )
