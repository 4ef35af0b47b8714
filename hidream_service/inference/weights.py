"""Where weights live on disk. Imports nothing heavy: the API process uses it to list endpoints.

Layout of a weights directory (real or tiny), see docs/weights.md:

    <root>/
      HiDream-I1-Full/          diffusers layout of HiDream-ai/HiDream-I1-Full
      HiDream-I1-Dev/           ... HiDream-ai/HiDream-I1-Dev
      HiDream-I1-Fast/          ... HiDream-ai/HiDream-I1-Fast
      Llama-3.1-8B-Instruct/    transformers layout of meta-llama/Llama-3.1-8B-Instruct (text_encoder_4)

Only the variants present are served. A variant directory may hold `hidream_service.json` with
`{"default_sample_size": N}` to change the rendered area (tiny weights use it; real ones do not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hidream_service.models.hidream_i1 import VARIANTS

TINY = "tiny"
TINY_VERSION = "tiny-v1"  # bump when the tiny architecture changes, so old builds are not reused
LLAMA_DIRECTORY = "Llama-3.1-8B-Instruct"
SERVICE_METADATA = "hidream_service.json"
REAL_DEFAULT_SAMPLE_SIZE = 128  # latent side; x8 VAE scale = 1024 px


class WeightsError(Exception):
    """The weights directory is missing something; the message says what and where."""


@dataclass(frozen=True)
class WeightsLayout:
    root: Path
    tiny: bool = False

    def variant_dir(self, variant: str) -> Path:
        return self.root / VARIANTS[variant].directory

    @property
    def llama_dir(self) -> Path:
        return self.root / LLAMA_DIRECTORY

    def available_variants(self) -> set[str]:
        if self.tiny:
            return set(VARIANTS)  # built on first use by the worker
        return {name for name in VARIANTS if (self.variant_dir(name) / "model_index.json").is_file()}

    def default_sample_size(self, variant: str) -> int:
        metadata = self.variant_dir(variant) / SERVICE_METADATA
        if metadata.is_file():
            return int(json.loads(metadata.read_text())["default_sample_size"])
        return REAL_DEFAULT_SAMPLE_SIZE

    def check(self, variant: str) -> None:
        """Raise WeightsError naming the first missing piece for this variant."""
        from hidream_service.inference.manifest import verify_directory

        for downloaded in (self.variant_dir(variant), self.llama_dir):
            verify_directory(downloaded)  # a downloaded directory must match its pinned manifest
        index = self.variant_dir(variant) / "model_index.json"
        if not index.is_file():
            raise WeightsError(f"{index} not found: put the diffusers folder of {VARIANTS[variant].directory} there")
        if not (self.llama_dir / "config.json").is_file():
            raise WeightsError(
                f"{self.llama_dir}/config.json not found: HiDream-I1 needs meta-llama/Llama-3.1-8B-Instruct "
                "(transformers layout) in that directory"
            )


def resolve_weights(weights: str | None, data_dir: Path) -> WeightsLayout | None:
    """`tiny` -> tiny weights under the data dir; a path -> that directory; None -> no weights."""
    if weights is None:
        return None
    if weights == TINY:
        return WeightsLayout(data_dir / "weights" / TINY_VERSION, tiny=True)
    root = Path(weights).expanduser()
    if not root.is_dir():
        raise WeightsError(f"weights directory {root} does not exist")
    return WeightsLayout(root)
