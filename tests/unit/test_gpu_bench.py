"""bench/gpu.py: its FLOP count for the real transformer, and that its code runs (tiny, on the CPU).
It never times anything here; the figures come from a GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402


def test_the_flop_count_of_the_real_transformer_matches_the_documented_bound() -> None:
    import torch
    from diffusers import HiDreamImageTransformer2DModel

    with torch.device("meta"):  # the 17 B parameter model's shapes, without its memory
        model = HiDreamImageTransformer2DModel(**gpu.FULL_CONFIG)

    assert sum(p.numel() for p in model.parameters()) == pytest.approx(17.11e9, rel=0.01)
    assert gpu.active_linear_params(model, gpu.FULL_CONFIG) == pytest.approx(12.0e9, rel=0.01)
    # docs/performance.md: about 2.3e14 FLOPs per CFG step at 1024x1024
    assert gpu.flops_per_forward(model, gpu.FULL_CONFIG, latent_side=128, batch=2) == pytest.approx(2.3e14, rel=0.02)


def test_the_benchmark_runs_end_to_end_on_the_tiny_config(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"

    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--steps", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["seconds_per_step"] > 0
