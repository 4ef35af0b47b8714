"""Where weights live on disk. Imports nothing heavy: the API process uses it to list endpoints.

Layout of a weights directory (real or tiny), see docs/weights.md:

    <root>/
      HiDream-I1-Full/          diffusers layout of HiDream-ai/HiDream-I1-Full
      HiDream-I1-Dev/           ... HiDream-ai/HiDream-I1-Dev
      HiDream-I1-Fast/          ... HiDream-ai/HiDream-I1-Fast
      HiDream-E1-Full/HiDream-E1-Full.safetensors   HiDream-ai/HiDream-E1-Full's LoRA file (over I1-Full)
      HiDream-E1-1/transformer/                     HiDream-ai/HiDream-E1-1's transformer folder
      Llama-3.1-8B-Instruct/    transformers layout of meta-llama/Llama-3.1-8B-Instruct (text_encoder_4)
      HiDream-O1-Image/         transformers (Qwen3-VL) layout of HiDream-ai/HiDream-O1-Image
      HiDream-O1-Image-Dev/     ... HiDream-ai/HiDream-O1-Image-Dev

Only the models present are served; E1 needs HiDream-I1-Full beside it (its VAE, text encoders and
base transformer); O1 needs nothing else. A model directory may hold `hidream_service.json` to shrink
what it renders (tiny weights use it; real ones do not): `{"default_sample_size": N}` for I1 and E1,
`{"resolution_divisor": D, "condition_image_size": S}` for O1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hidream_service.inference.hidream_o1.recipes import RECIPES as O1_RECIPES
from hidream_service.models.hidream_i1 import VARIANTS

TINY = "tiny"
TINY_VERSION = "tiny-v3"  # bump when the tiny architecture changes, so old builds are not reused
LLAMA_DIRECTORY = "Llama-3.1-8B-Instruct"
SERVICE_METADATA = "hidream_service.json"
REAL_DEFAULT_SAMPLE_SIZE = 128  # latent side; x8 VAE scale = 1024 px
E1_FULL = "e1-full"
E1_1 = "e1-1"
#: Model key -> directory under the weights root. I1 keys are the variant names.
MODEL_DIRECTORIES = {
    **{name: variant.directory for name, variant in VARIANTS.items()},
    E1_FULL: "HiDream-E1-Full",
    E1_1: "HiDream-E1-1",
    **{key: recipe.directory for key, recipe in O1_RECIPES.items()},
}
#: E1-Full edits at 768x768 (official inference.py); E1.1 at about 1 MP.
REAL_SAMPLE_SIZES = {E1_FULL: 96}
E1_FULL_WEIGHTS = "HiDream-E1-Full.safetensors"
E1_1_TRANSFORMER = "transformer"
#: What an O1 directory needs besides its safetensors (one file, or shards with an index).
O1_FILES = ("config.json", "tokenizer.json", "preprocessor_config.json")
O1_WEIGHTS = ("model.safetensors.index.json", "model.safetensors")


class WeightsError(Exception):
    """The weights directory is missing something; the message says what and where."""


@dataclass(frozen=True)
class WeightsLayout:
    root: Path
    tiny: bool = False

    def variant_dir(self, variant: str) -> Path:
        return self.root / MODEL_DIRECTORIES[variant]

    @property
    def llama_dir(self) -> Path:
        return self.root / LLAMA_DIRECTORY

    @property
    def e1_full_weights(self) -> Path:
        return self.variant_dir(E1_FULL) / E1_FULL_WEIGHTS

    @property
    def e1_1_transformer(self) -> Path:
        return self.variant_dir(E1_1) / E1_1_TRANSFORMER

    def available_variants(self) -> set[str]:
        """Model keys this layout can serve: I1 variants, e1-full, e1-1, o1 and o1-dev."""
        if self.tiny:
            return set(MODEL_DIRECTORIES)  # built on first use by the worker
        found = {name for name in VARIANTS if (self.variant_dir(name) / "model_index.json").is_file()}
        found |= {key for key in O1_RECIPES if self._o1_problem(key) is None}
        if "full" in found:
            if self.e1_full_weights.is_file():
                found.add(E1_FULL)
            if (self.e1_1_transformer / "config.json").is_file() or any(self.e1_1_transformer.glob("*.safetensors")):
                found.add(E1_1)
        return found

    def service_metadata(self, variant: str) -> dict[str, int]:
        """The directory's `hidream_service.json` (tiny weights only); {} for real weights."""
        metadata = self.variant_dir(variant) / SERVICE_METADATA
        if not metadata.is_file():
            return {}
        return {str(key): int(value) for key, value in json.loads(metadata.read_text()).items()}

    def default_sample_size(self, variant: str) -> int:
        return self.service_metadata(variant).get(
            "default_sample_size", REAL_SAMPLE_SIZES.get(variant, REAL_DEFAULT_SAMPLE_SIZE)
        )

    def _o1_problem(self, variant: str) -> str | None:
        directory = self.variant_dir(variant)
        missing = [name for name in O1_FILES if not (directory / name).is_file()]
        if not any((directory / name).is_file() for name in O1_WEIGHTS):
            missing.append(" or ".join(O1_WEIGHTS))
        if not missing:
            return None
        repository = O1_RECIPES[variant].repository
        return f"{directory} lacks {', '.join(missing)}: put the files of {repository} there"

    def check(self, variant: str) -> None:
        """Raise WeightsError naming the first missing piece for this model."""
        from hidream_service.inference.manifest import verify_directory

        if variant in O1_RECIPES:
            verify_directory(self.variant_dir(variant))  # a downloaded directory must match its pinned manifest
            problem = self._o1_problem(variant)
            if problem is not None:
                raise WeightsError(problem)
            return
        if variant == E1_FULL and not self.e1_full_weights.is_file():
            raise WeightsError(f"{self.e1_full_weights} not found: put HiDream-ai/HiDream-E1-Full's LoRA file there")
        if variant == E1_1 and not self.e1_1_transformer.is_dir():
            raise WeightsError(
                f"{self.e1_1_transformer} not found: put HiDream-ai/HiDream-E1-1's transformer folder there"
            )
        base = "full" if variant in (E1_FULL, E1_1) else variant
        for downloaded in dict.fromkeys((self.variant_dir(variant), self.variant_dir(base), self.llama_dir)):
            verify_directory(downloaded)  # a downloaded directory must match its pinned manifest
        index = self.variant_dir(base) / "model_index.json"
        if not index.is_file():
            raise WeightsError(f"{index} not found: put the diffusers folder of {MODEL_DIRECTORIES[base]} there")
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
