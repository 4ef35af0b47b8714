"""HIDREAM_MEMORY_MODE without a GPU: the setting, the computed figures (and the docs that show
them), what `hidream doctor` recommends for a GPU's memory, and the Modal default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

import modal_app
from hidream_service.commands.doctor import Level, check_memory_mode, run_checks
from hidream_service.config import Settings
from hidream_service.inference.memory_modes import (
    BYTES_PER_PARAMETER,
    GIB,
    PARAMETERS,
    MemoryMode,
    needed_gib,
    peak_weights_gib,
    recommended_mode,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "weights.md"
MIB = 1 << 20
#: Total memory as the driver reports it.
H100 = ("NVIDIA H100 80GB HBM3", 81_559 * MIB)
L40S = ("NVIDIA L40S", 46_068 * MIB)
A100_40 = ("NVIDIA A100-SXM4-40GB", 40_960 * MIB)
RTX_4090 = ("NVIDIA GeForce RTX 4090", 24_564 * MIB)
RTX_4080 = ("NVIDIA GeForce RTX 4080", 16_376 * MIB)


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)  # type: ignore[arg-type]


def test_the_setting_reads_every_mode_and_refuses_others(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert settings(tmp_path).memory_mode is MemoryMode.GPU
    for mode in MemoryMode:
        monkeypatch.setenv("HIDREAM_MEMORY_MODE", mode.value)
        assert settings(tmp_path).memory_mode is mode

    monkeypatch.setenv("HIDREAM_MEMORY_MODE", "cpu-offload")
    with pytest.raises(ValidationError, match="memory_mode"):
        settings(tmp_path)


def test_modal_containers_keep_everything_on_the_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HIDREAM_MEMORY_MODE", raising=False)
    for name, value in modal_app.GPU_ENV.items():
        monkeypatch.setenv(name, value)

    assert settings(tmp_path).memory_mode is MemoryMode.GPU


def test_each_mode_keeps_less_on_the_gpu_than_the_one_before() -> None:
    peaks = [peak_weights_gib(mode) for mode in MemoryMode]

    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == len(peaks)
    assert peaks[0] == pytest.approx(sum(PARAMETERS.values()) * BYTES_PER_PARAMETER / GIB)


@pytest.mark.parametrize(
    ("gpu", "mode"),
    [
        (H100, MemoryMode.GPU),
        (L40S, MemoryMode.MODEL_OFFLOAD),
        (A100_40, MemoryMode.MODEL_OFFLOAD),
        (RTX_4090, MemoryMode.BLOCK_OFFLOAD),
        (RTX_4080, None),
    ],
)
def test_the_recommendation_is_the_mode_that_keeps_the_most_and_fits(
    gpu: tuple[str, int], mode: MemoryMode | None
) -> None:
    size = gpu[1] / GIB

    assert recommended_mode(size) is mode
    if mode is not None:
        assert needed_gib(mode) <= size
        keeps_more = list(MemoryMode)[: list(MemoryMode).index(mode)]
        assert all(needed_gib(other) > size for other in keeps_more)


def test_the_docs_show_the_computed_figures() -> None:
    section = DOCS.read_text().split("## Memory modes", 1)[1]

    for name, count in PARAMETERS.items():
        assert f"{count:,} | {count * BYTES_PER_PARAMETER / GIB:.2f} GiB" in section, name
    for mode in MemoryMode:
        row = re.search(rf"^\| `{mode.value}` \|[^|]*= ([\d.]+) GiB[^|]*\| ([\d.]+) GiB \|", section, re.MULTILINE)
        assert row is not None, mode
        assert float(row[1]) == pytest.approx(peak_weights_gib(mode), abs=0.005)
        assert float(row[2]) == pytest.approx(needed_gib(mode), abs=0.05)


def test_doctor_recommends_the_mode_for_the_gpu(tmp_path: Path) -> None:
    ok = check_memory_mode(settings(tmp_path), gpus=lambda: [H100])
    assert ok.level is Level.OK and "gpu needs about 62 GiB" in ok.message

    too_big = check_memory_mode(settings(tmp_path), gpus=lambda: [L40S])
    assert too_big.level is Level.FAIL and too_big.fix == "set HIDREAM_MEMORY_MODE=model-offload"

    fits = check_memory_mode(settings(tmp_path, memory_mode="model-offload"), gpus=lambda: [L40S])
    assert fits.level is Level.OK and "the mode that keeps the most" in fits.message

    slower = check_memory_mode(settings(tmp_path, memory_mode="block-offload"), gpus=lambda: [H100])
    assert slower.level is Level.OK and "gpu fits too" in slower.message


def test_doctor_sizes_for_the_smallest_gpu_and_warns_below_every_mode(tmp_path: Path) -> None:
    mixed = check_memory_mode(settings(tmp_path, memory_mode="model-offload"), gpus=lambda: [H100, RTX_4090])
    assert mixed.level is Level.FAIL and mixed.fix == "set HIDREAM_MEMORY_MODE=block-offload"

    small = check_memory_mode(settings(tmp_path, memory_mode="block-offload"), gpus=lambda: [RTX_4080])
    assert small.level is Level.WARN and "need about 19 GiB" in small.message


def test_doctor_has_nothing_to_size_on_the_cpu(tmp_path: Path) -> None:
    def no_gpu_expected() -> list[tuple[str, int]]:
        raise AssertionError("HIDREAM_DEVICE=cpu: the GPUs do not matter")

    check = check_memory_mode(settings(tmp_path, device="cpu"), gpus=no_gpu_expected)

    assert check.level is Level.OK and "no GPU in use" in check.message
    assert "memory mode" in [check.name for check in run_checks(settings(tmp_path, device="cpu"))]
