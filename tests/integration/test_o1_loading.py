"""Loading an O1 checkpoint refuses any tensor that does not fit the model exactly, naming it
(transformers 5 only warns, and leaves missing layers random)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hidream_service.inference.hidream_o1.model import CheckpointMismatch, HiDreamO1ForConditionalGeneration
from hidream_service.inference.hidream_o1.pipeline import HiDreamO1Pipeline
from hidream_service.inference.hidream_o1.recipes import FULL
from hidream_service.inference.weights import WeightsError

Tensors = dict[str, torch.Tensor]


def stored_tensors(directory: Path) -> Tensors:
    """Every tensor of a checkpoint folder, one file or shards."""
    tensors: Tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def rewrite_checkpoint(directory: Path, tensors: Tensors) -> None:
    """Replace the folder's checkpoint by `tensors` in one file (which from_pretrained reads without an index)."""
    for file in [*directory.glob("*.safetensors"), *directory.glob("*.safetensors.index.json")]:
        file.unlink()
    save_file(tensors, str(directory / "model.safetensors"))


def drop(name: str) -> Callable[[Tensors], None]:
    def change(tensors: Tensors) -> None:
        del tensors[name]

    return change


def add(name: str, value: torch.Tensor) -> Callable[[Tensors], None]:
    return lambda tensors: tensors.__setitem__(name, value)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            drop("model.x_embedder.proj1.weight"),
            "1 tensor(s) missing from the checkpoint: model.x_embedder.proj1.weight",
        ),
        (
            add("model.t_embedder2.mlp.0.weight", torch.zeros(4, 4)),
            "1 tensor(s) in the checkpoint but not in the model: model.t_embedder2.mlp.0.weight",
        ),
        (
            add("model.final_layer2.linear.bias", torch.zeros(5)),
            # The tiny pixel head predicts 3 channels x 2x2 pixels per patch.
            "1 tensor(s) of another shape than the model's: "
            "model.final_layer2.linear.bias ((5,) stored, (12,) expected)",
        ),
    ],
    ids=["missing", "unexpected", "misshapen"],
)
def test_a_checkpoint_that_does_not_fit_exactly_is_refused_by_name(
    tiny_weights: Path, tmp_path: Path, change: Callable[[Tensors], None], says: str
) -> None:
    folder = tmp_path / FULL.directory
    shutil.copytree(tiny_weights / FULL.directory, folder)
    tensors = stored_tensors(folder)
    change(tensors)
    rewrite_checkpoint(folder, tensors)

    with pytest.raises(CheckpointMismatch) as refused:
        HiDreamO1Pipeline.load(folder, FULL, "cpu")  # the loader every O1 runner uses

    assert isinstance(refused.value, WeightsError)
    assert str(refused.value) == f"{folder} does not fit HiDream-O1: {says}"


def test_the_checkpoint_as_published_loads_every_tensor(tiny_weights: Path) -> None:
    folder = tiny_weights / FULL.directory
    stored = stored_tensors(folder)

    model = HiDreamO1ForConditionalGeneration.load_checked(folder, torch.float32)

    loaded = model.state_dict()
    assert set(loaded) == set(stored)
    assert all(torch.equal(loaded[name], stored[name]) for name in stored)
    assert model.model.language_model.config._attn_implementation == "hidream_o1"
