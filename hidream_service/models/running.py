"""What every image runner does around its model call: seeds, step logs and cancel, outputs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from hidream_service.models.base import RunContext

MAX_SEED = 2**63 - 1


def seed_for(job_id: str) -> int:
    """The seed of a job that did not choose one: random per job, yet the same if the job runs again."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") % (MAX_SEED - 8)


def generators_for(seed: int, count: int) -> list[Any]:
    """One generator per image: image i depends only on seed + i, not on how many were asked for."""
    import torch

    return [torch.Generator(device="cpu").manual_seed((seed + index) % 2**64) for index in range(count)]


def step_reporter(ctx: RunContext, image: int = 0) -> Callable[[int, int, Callable[[], Any]], bool]:
    """Reports each finished step as progress (and offers a preview of the batch's `image`, the
    job's first), and says whether to stop."""

    def on_step(index: int, total: int, forming: Callable[[], Any]) -> bool:
        ctx.progress(index + 1, total)
        ctx.preview(index + 1, total, lambda: forming()[image])
        return ctx.cancelled()

    return on_step


def image_outputs(
    ctx: RunContext, images: list[Any], *, enable_safety_checker: bool, output_format: str, sync_mode: bool
) -> tuple[list[dict[str, Any]], list[bool]]:
    """Screen (unless disabled), then store: fal's `images` list and `has_nsfw_concepts`."""
    if enable_safety_checker:
        images, flagged = ctx.screen(images)
    else:
        ctx.log("safety checker disabled by request")
        flagged = [False] * len(images)
    files = [
        ctx.save_image(index, image, output_format, sync_mode=sync_mode).model_dump()
        for index, image in enumerate(images)
    ]
    return files, flagged


def image_result(
    ctx: RunContext, images: list[Any], params: Any, *, seed: int, prompt: str, inference_seconds: float
) -> dict[str, Any]:
    """fal's output document for `images`, screened and stored as `params` (enable_safety_checker,
    output_format, sync_mode) asks."""
    files, flagged = image_outputs(
        ctx,
        images,
        enable_safety_checker=params.enable_safety_checker,
        output_format=params.output_format,
        sync_mode=params.sync_mode,
    )
    return {
        "images": files,
        "seed": seed,
        "has_nsfw_concepts": flagged,
        "prompt": prompt,
        "timings": {"inference": inference_seconds},
    }
