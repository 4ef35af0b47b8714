"""The inference and batching benchmarks' peer: the same tiny HiDream-I1 pipeline called directly, no service.

    python bench/direct_pipeline.py WEIGHTS_DIR      then, one per line on stdin:
        one           -> the inference benchmark's call (I1_ARGS), one prompt
        batch N [K]   -> the batching benchmark's call (BATCH_ARGS) with N prompts in one call: prompts
                         "job K" ... "job K+N-1", seeds K ... K+N-1 (K defaults to 0)
    each answered on stdout with one line: {"ms": <wall time of the call>}

Loads the pipeline through the service's own loader (so both sides run identical weights and
scheduler) and stays up, so that bench/run.py can alternate its calls with jobs sent to the service:
this machine's speed drifts too much for one side to be measured after the other.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hidream_service.inference.weights import WeightsLayout
from hidream_service.models.registry import DEFAULT_REGISTRY
from hidream_service.models.sizes import ImageSizeName, requested_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BATCH_ARGS, I1_ARGS


def main() -> None:
    pipeline = DEFAULT_REGISTRY.pipelines(WeightsLayout(Path(sys.argv[1])), "cpu").get("full").pipeline
    width, height = requested_size(ImageSizeName.SQUARE)  # the pipeline scales it to its area, as for a service job

    def call(prompts: list[str], steps: Any, guidance: Any, seed: int) -> float:
        started = time.perf_counter()
        pipeline(
            prompt=prompts,
            height=height,
            width=width,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            generator=[torch.Generator().manual_seed(seed + n) for n in range(len(prompts))],
            output_type="pil",
        )
        return (time.perf_counter() - started) * 1000

    for line in sys.stdin:
        command = line.split()
        if command == ["one"]:
            ms = call([str(I1_ARGS["prompt"])], I1_ARGS["num_inference_steps"], I1_ARGS["guidance_scale"], 7)
        elif len(command) in (2, 3) and command[0] == "batch":
            first = int(command[2]) if len(command) == 3 else 0
            prompts = [f"job {n}" for n in range(first, first + int(command[1]))]
            ms = call(prompts, BATCH_ARGS["num_inference_steps"], 5.0, first)
        else:
            raise SystemExit(f"unknown command {line!r}")
        print(json.dumps({"ms": ms}), flush=True)


if __name__ == "__main__":
    main()
