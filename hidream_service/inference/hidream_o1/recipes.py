"""The two published HiDream-O1 checkpoints and how the official release samples each one.

From HiDream-ai/HiDream-O1-Image inference.py and models/pipeline.py (main branch, 210c9bf):

| checkpoint | steps | CFG | sampler | noise scale |
| --- | --- | --- | --- | --- |
| HiDream-O1-Image (Full) | 50 | 5.0 | UniPC on flow sigmas, shift 3.0 | 8.0 |
| -Dev, one reference (editing) | 28 | off | flow-match Euler on a fixed 28-timestep list | 8.0 |
| -Dev, otherwise | 28 | off | "flash": clean prediction re-noised each step, same list | 7.5, clipped at 2.5 std |

Pure Python: the API process imports it for the endpoint defaults and the weights layout.
"""

from __future__ import annotations

from dataclasses import dataclass

O1 = "o1"
O1_DEV = "o1-dev"

#: The distilled Dev model's timesteps (of 1000), highest noise first.
DEV_TIMESTEPS = (
    999, 987, 974, 960, 945, 929, 913, 895, 877, 857, 836, 814, 790, 764,
    737, 707, 675, 640, 602, 560, 515, 464, 409, 347, 278, 199, 110, 8,
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    key: str  # the model key of the weights layout
    directory: str  # sub-directory of the weights root
    repository: str  # the Hugging Face repository it comes from
    steps: int
    guidance: float
    shift: float  # flow shift of the UniPC schedule (Full only)
    distilled: bool  # Dev: the fixed timestep list and no CFG


FULL = Recipe(O1, "HiDream-O1-Image", "HiDream-ai/HiDream-O1-Image", 50, 5.0, 3.0, distilled=False)
DEV = Recipe(O1_DEV, "HiDream-O1-Image-Dev", "HiDream-ai/HiDream-O1-Image-Dev", 28, 0.0, 1.0, distilled=True)
RECIPES = {recipe.key: recipe for recipe in (FULL, DEV)}

#: The noise the sampling starts from has this standard deviation (the images live in [-1, 1]).
NOISE_SCALE = 8.0
#: Dev's "flash" sampler starts from, and re-noises with, this scale, clipping noise at this many stds.
FLASH_NOISE_SCALE = 7.5
FLASH_NOISE_CLIP_STD = 2.5


@dataclass(frozen=True)
class Sampling:
    """What one request runs: the sampler, its timesteps (None: UniPC's own schedule) and noise."""

    sampler: str  # "unipc" | "euler" | "flash"
    timesteps: tuple[int, ...] | None
    noise_scale: float
    noise_clip_std: float = 0.0


def sampling_for(recipe: Recipe, steps: int, reference_count: int) -> Sampling:
    """The release's sampler for this checkpoint and task.

    Dev always runs its distilled timestep list; the release has no other schedule for it, so fewer
    steps take evenly spaced entries of that list (the first one always).
    """
    if not recipe.distilled:
        return Sampling("unipc", None, NOISE_SCALE)
    timesteps = dev_timesteps(steps)
    if reference_count == 1:  # editing: the release's default Dev editing scheduler
        return Sampling("euler", timesteps, NOISE_SCALE)
    return Sampling("flash", timesteps, FLASH_NOISE_SCALE, FLASH_NOISE_CLIP_STD)


def dev_timesteps(steps: int) -> tuple[int, ...]:
    if steps >= len(DEV_TIMESTEPS):
        return DEV_TIMESTEPS
    last = len(DEV_TIMESTEPS) - 1
    return tuple(DEV_TIMESTEPS[round(index * last / max(steps - 1, 1))] for index in range(steps))
