"""The inference benchmark's peer: the same tiny HiDream-I1 pipeline called directly, no service.

    python bench/direct_pipeline.py WEIGHTS_DIR RUNS   -> last line: {"ms": [...]}

Loads the pipeline through the service's own loader (so both sides run identical weights and
scheduler), then times RUNS calls after one warm-up, with the inference benchmark's arguments.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from hidream_service.inference.pipelines import PipelineCache
from hidream_service.inference.weights import WeightsLayout
from hidream_service.models.hidream_i1 import rendered_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import I1_ARGS


def main() -> None:
    weights, runs = Path(sys.argv[1]), int(sys.argv[2])
    loaded = PipelineCache(WeightsLayout(weights), "cpu").get("full")
    width, height = rendered_size(512, 512, loaded.area_side)
    timings = []
    for n in range(runs + 1):
        started = time.perf_counter()
        loaded.pipeline(
            prompt=I1_ARGS["prompt"],
            height=height,
            width=width,
            num_inference_steps=I1_ARGS["num_inference_steps"],
            guidance_scale=I1_ARGS["guidance_scale"],
            generator=[torch.Generator().manual_seed(int(I1_ARGS["seed"]))],
            output_type="pil",
        )
        if n > 0:
            timings.append((time.perf_counter() - started) * 1000)
    print(json.dumps({"ms": timings}))


if __name__ == "__main__":
    main()
