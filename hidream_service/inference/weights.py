"""Where weights live on disk. Imports nothing heavy: the API process uses it to list endpoints.

A weights directory (real or tiny) holds one folder per published repository, named as in
docs/weights.md (`HiDream-I1-Full/`, `Llama-3.1-8B-Instruct/`, `HiDream-O1-Image/`, ...). Which
folders a model needs, and what makes one complete, is its family's business (hidream_service/models/);
this module knows only the root and the files every folder may carry.

A model folder may hold `hidream_service.json` to shrink what it renders (tiny weights use it; real
ones do not): `{"default_sample_size": N}` for I1 and E1, `{"resolution_divisor": D,
"condition_image_size": S}` for O1.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

TINY = "tiny"
TINY_VERSION = "tiny-v4"  # bump when the tiny architecture changes, so old builds are not reused
SERVICE_METADATA = "hidream_service.json"


class WeightsError(Exception):
    """The weights directory is missing something; the message says what and where."""


@dataclass(frozen=True)
class WeightsLayout:
    root: Path
    tiny: bool = False

    def directory(self, name: str) -> Path:
        """A repository's folder under the root."""
        return self.root / name

    def service_metadata(self, name: str) -> dict[str, int]:
        """The folder's `hidream_service.json` (tiny weights only); {} for real weights."""
        metadata = self.directory(name) / SERVICE_METADATA
        if not metadata.is_file():
            return {}
        return {str(key): int(value) for key, value in json.loads(metadata.read_text()).items()}


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


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def folder_weights_problem(folder: Path) -> str | None:
    """What is missing from a model folder with a config.json: its weights, or a shard its index names."""
    indexes = list(folder.glob("*.index.json"))
    if indexes:
        for index in indexes:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            missing = sorted(shard for shard in shards if not (folder / shard).is_file())
            if missing:
                return f"{folder} lacks {len(missing)} of the shards {index.name} names, e.g. {missing[0]}"
        return None
    if not any(entry.suffix in WEIGHT_SUFFIXES for entry in folder.iterdir()):
        return f"{folder} has a config.json but no weight file (*.safetensors or *.bin)"
    return None


def diffusers_folder_problem(directory: Path, supplied: Collection[str] = ()) -> str | None:
    """Every component a diffusers folder's model_index.json lists must be there with its weights,
    but those the loader `supplied` from elsewhere (HiDream's Llama encoder)."""
    try:
        index = json.loads((directory / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        return f"{directory}/model_index.json cannot be read: {exc}"
    for name, spec in index.items():
        if name.startswith("_") or name in supplied or not isinstance(spec, list) or spec[0] is None:
            continue
        folder = directory / name
        if not folder.is_dir() or not any(folder.iterdir()):
            return f"{folder} is missing or empty (model_index.json lists {name})"
        if (folder / "config.json").is_file():
            problem = folder_weights_problem(folder)
            if problem:
                return problem
    return None


def misnamed_folder(root: Path, expected: str, other_names: Iterable[str]) -> str | None:
    """When `expected` is not under `root` but the same repository is, under a name other tools give
    it (HiDream's own scripts, say): what to rename. None otherwise.

    Only one name is loaded: the lock file, `hidream weights download` and the Modal Volume all use
    it, and a root holding both folders would leave open which one is served."""
    if (root / expected).exists():
        return None
    for name in other_names:
        if (root / name).is_dir():
            return (
                f"{root / name} is there, but the service loads this repository from {root / expected}: "
                f"rename the folder (mv {root / name} {root / expected})"
            )
    return None
