"""Where each weights directory comes from: a Hugging Face repository at a pinned revision.

A revision is a 40-character commit sha, never a branch: the same deployment must load the same
bytes next month. `UNPINNED` marks a revision nobody has looked up yet; `download_weights` refuses
it before touching the network. To pin one, take the commit sha from the repository's "Files and
versions" history (or `hf api` / `huggingface_hub.HfApi().model_info(repo).sha`) and set it here.

Directory names are the layout of docs/weights.md, so `hidream serve --weights DIR` and the Modal
GPU containers load the same tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hidream_service.inference.hidream_o1.recipes import RECIPES as O1_RECIPES
from hidream_service.inference.weights import LLAMA_DIRECTORY
from hidream_service.models.hidream_i1 import VARIANTS

UNPINNED = "UNPINNED"
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")

# Pinned revisions. The I1, E1 and Llama ones could not be looked up from where this was written
# (no access to the hub), so they are placeholders that the download refuses until a real commit
# sha is filled in.
HIDREAM_I1_FULL_REVISION = UNPINNED
HIDREAM_I1_DEV_REVISION = UNPINNED
HIDREAM_I1_FAST_REVISION = UNPINNED
HIDREAM_E1_FULL_REVISION = UNPINNED
HIDREAM_E1_1_REVISION = UNPINNED
LLAMA_3_1_8B_INSTRUCT_REVISION = UNPINNED
# O1's come from a third party's record of the checkpoints it converted, not from the hub itself:
# confirm them against each repository's history before a production deployment.
HIDREAM_O1_IMAGE_REVISION = "0b0901d99f200389e138c61946af1185f5f49a13"
HIDREAM_O1_IMAGE_DEV_REVISION = "c0bada0e15c54a9f96a6d1ecc35575b32bc21544"


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
                f"{self.repo} has no pinned revision ({self.revision!r}): set its *_REVISION constant in "
                "hidream_service/inference/sources.py to a 40-character commit sha before downloading"
            )


HIDREAM_I1_FULL = WeightSource("HiDream-ai/HiDream-I1-Full", HIDREAM_I1_FULL_REVISION, VARIANTS["full"].directory)
HIDREAM_I1_DEV = WeightSource("HiDream-ai/HiDream-I1-Dev", HIDREAM_I1_DEV_REVISION, VARIANTS["dev"].directory)
HIDREAM_I1_FAST = WeightSource("HiDream-ai/HiDream-I1-Fast", HIDREAM_I1_FAST_REVISION, VARIANTS["fast"].directory)
HIDREAM_E1_FULL = WeightSource("HiDream-ai/HiDream-E1-Full", HIDREAM_E1_FULL_REVISION, "HiDream-E1-Full")
HIDREAM_E1_1 = WeightSource("HiDream-ai/HiDream-E1-1", HIDREAM_E1_1_REVISION, "HiDream-E1-1")
# O1 is one self-contained Qwen3-VL checkpoint: no VAE, no separate text encoder, no Llama.
HIDREAM_O1_IMAGE = WeightSource("HiDream-ai/HiDream-O1-Image", HIDREAM_O1_IMAGE_REVISION, O1_RECIPES["o1"].directory)
HIDREAM_O1_IMAGE_DEV = WeightSource(
    "HiDream-ai/HiDream-O1-Image-Dev", HIDREAM_O1_IMAGE_DEV_REVISION, O1_RECIPES["o1-dev"].directory
)
# text_encoder_4 of every HiDream pipeline; gated by Meta's licence. The original/ folder (the
# consolidated .pth checkpoint) is not needed by transformers.
LLAMA_3_1_8B_INSTRUCT = WeightSource(
    "meta-llama/Llama-3.1-8B-Instruct",
    LLAMA_3_1_8B_INSTRUCT_REVISION,
    LLAMA_DIRECTORY,
    allow_patterns=("*.json", "*.safetensors"),
    gated=True,
)

SOURCES = (
    HIDREAM_I1_FULL,
    HIDREAM_I1_DEV,
    HIDREAM_I1_FAST,
    HIDREAM_E1_FULL,
    HIDREAM_E1_1,
    HIDREAM_O1_IMAGE,
    HIDREAM_O1_IMAGE_DEV,
    LLAMA_3_1_8B_INSTRUCT,
)

#: What `download_weights --model NAME` fetches: the model's own repository and what it loads with.
MODELS: dict[str, tuple[WeightSource, ...]] = {
    "hidream-i1-full": (HIDREAM_I1_FULL, LLAMA_3_1_8B_INSTRUCT),
    "hidream-i1-dev": (HIDREAM_I1_DEV, LLAMA_3_1_8B_INSTRUCT),
    "hidream-i1-fast": (HIDREAM_I1_FAST, LLAMA_3_1_8B_INSTRUCT),
    # E1 edits with I1-Full's components around its own transformer (HiDream-ai/HiDream-E1 inference*.py).
    "hidream-e1-full": (HIDREAM_E1_FULL, HIDREAM_I1_FULL, LLAMA_3_1_8B_INSTRUCT),
    "hidream-e1-1": (HIDREAM_E1_1, HIDREAM_I1_FULL, LLAMA_3_1_8B_INSTRUCT),
    "hidream-o1-image": (HIDREAM_O1_IMAGE,),
    "hidream-o1-image-dev": (HIDREAM_O1_IMAGE_DEV,),
}
ALL = "all"


def sources_for(model: str) -> tuple[WeightSource, ...]:
    """The sources of one model name, or of every model for `all`; each source once."""
    if model == ALL:
        return SOURCES
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join([*MODELS, ALL])}")
    return MODELS[model]


def source_for_repo(repo: str) -> WeightSource | None:
    return next((source for source in SOURCES if source.repo == repo), None)
