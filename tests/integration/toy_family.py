"""A toy model family, for tests only: everything a family declares, in one module.

acme/toy paints a gradient between two colours that its weights hold (`Acme-Toy/palette.json`), in
steps. Registering it takes one line: `Registry([*FAMILIES, TOY])`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field

from hidream_service.inference.pipelines import LoadedPipeline, PipelineCache
from hidream_service.inference.sources import WeightSource
from hidream_service.inference.weights import WeightsError, WeightsLayout
from hidream_service.models.base import JobCancelled, RunContext, Runner, StrictInput
from hidream_service.models.family import Endpoint, ModelFamily, Task
from hidream_service.models.running import image_result
from hidream_service.models.sizes import ImageSize

FOLDER = "Acme-Toy"
PALETTE = "palette.json"
SOURCE = WeightSource("acme/toy", FOLDER, revision="0" * 40)


class ToyInput(StrictInput):
    prompt: str = Field(min_length=1, max_length=1000)
    image_size: ImageSize = Field(default_factory=lambda: ImageSize(width=32, height=16))
    num_inference_steps: int = Field(default=3, ge=1, le=10)
    num_images: int = Field(default=1, ge=1, le=2)
    seed: int | None = Field(default=None, ge=0)
    enable_safety_checker: bool = True
    output_format: str = Field(default="png", pattern="^(jpeg|png|webp)$")
    sync_mode: bool = False


def paint(palette: dict[str, list[int]], params: ToyInput, ctx: RunContext) -> dict[str, Any]:
    started = time.perf_counter()
    for step in range(params.num_inference_steps):
        if ctx.cancelled():
            raise JobCancelled()
        ctx.progress(step + 1, params.num_inference_steps)
    width, height = params.image_size.width, params.image_size.height
    start, end = palette["from"], palette["to"]
    image = Image.new("RGB", (width, height))
    for x in range(width):
        colour = tuple(a + (b - a) * x // max(width - 1, 1) for a, b in zip(start, end, strict=True))
        for y in range(height):
            image.putpixel((x, y), colour)
    seed = params.seed or 0
    return image_result(
        ctx, [image] * params.num_images, params, seed=seed, prompt=params.prompt,
        inference_seconds=time.perf_counter() - started,
    )  # fmt: skip


class ToyFamily(ModelFamily):
    name = "acme-toy"
    models = ("toy",)

    def __init__(self) -> None:
        self.endpoints = (
            self.endpoint("acme/toy", "Acme toy", ToyInput, Task.TEXT_TO_IMAGE, "toy", replicate="acme/toy"),
        )

    def sources(self) -> Mapping[str, tuple[WeightSource, ...]]:
        return {"acme-toy": self.model_sources("toy")}

    def model_sources(self, model: str) -> tuple[WeightSource, ...]:
        return (SOURCE,)

    def available_models(self, layout: WeightsLayout) -> set[str]:
        return {"toy"} if (layout.directory(FOLDER) / PALETTE).is_file() else set()

    def check_weights(self, layout: WeightsLayout, model: str) -> None:
        if not (layout.directory(FOLDER) / PALETTE).is_file():
            raise WeightsError(f"{layout.directory(FOLDER) / PALETTE} not found")

    def build_tiny(self, root: Path) -> None:
        write_weights(root)

    def load(self, model: str, pipelines: PipelineCache) -> LoadedPipeline:
        palette = json.loads((pipelines.layout.directory(FOLDER) / PALETTE).read_text())
        return LoadedPipeline(pipeline=palette, area_side=0, vae_scale_factor=1)

    def runner(self, endpoint: Endpoint, pipelines: Callable[[], PipelineCache]) -> Runner:
        def run(params: ToyInput, ctx: RunContext) -> dict[str, Any]:
            return paint(pipelines().get("toy").pipeline, params, ctx)

        return run


def write_weights(root: Path) -> None:
    (root / FOLDER).mkdir(parents=True, exist_ok=True)
    (root / FOLDER / PALETTE).write_text(json.dumps({"from": [255, 0, 0], "to": [0, 0, 255]}))


TOY = ToyFamily()
