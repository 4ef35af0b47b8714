"""The Llama encoder's folder: HiDream's own scripts name it `Meta-Llama-3.1-8B-Instruct`; the
service loads `Llama-3.1-8B-Instruct` only, and says what to rename."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hidream_service.commands.doctor import Level, check_weights
from hidream_service.config import Settings
from hidream_service.inference.weights import WeightsError, WeightsLayout
from hidream_service.models.registry import DEFAULT_REGISTRY
from tests.unit.test_doctor import write_variant

OFFICIAL_SCRIPTS_NAME = "Meta-Llama-3.1-8B-Instruct"


def test_the_official_scripts_folder_name_is_refused_with_the_rename(tmp_path: Path) -> None:
    root = tmp_path / "weights"
    write_variant(root)
    (root / "Llama-3.1-8B-Instruct").rename(root / OFFICIAL_SCRIPTS_NAME)

    with pytest.raises(WeightsError) as refused:
        DEFAULT_REGISTRY.check_weights(WeightsLayout(root), "fast")
    check = check_weights(Settings(data_dir=tmp_path / "data", weights=str(root)))

    expected = f"rename the folder (mv {root / OFFICIAL_SCRIPTS_NAME} {root / 'Llama-3.1-8B-Instruct'})"
    assert expected in str(refused.value)
    assert check.level is Level.FAIL and expected in check.message


def test_with_both_names_the_service_folder_is_loaded(tmp_path: Path) -> None:
    root = tmp_path / "weights"
    write_variant(root)
    shutil.copytree(root / "Llama-3.1-8B-Instruct", root / OFFICIAL_SCRIPTS_NAME)

    DEFAULT_REGISTRY.check_weights(WeightsLayout(root), "fast")


def test_a_model_index_naming_the_llama_needs_no_folder_for_it(tmp_path: Path) -> None:
    """Whether a published model_index.json lists the Llama or not, it is loaded from its own folder."""
    root = tmp_path / "weights"
    variant = write_variant(root)
    index = json.loads((variant / "model_index.json").read_text())
    index["text_encoder_4"] = ["transformers", "LlamaForCausalLM"]
    index["tokenizer_4"] = ["transformers", "PreTrainedTokenizerFast"]
    (variant / "model_index.json").write_text(json.dumps(index))

    DEFAULT_REGISTRY.check_weights(WeightsLayout(root), "fast")
