"""How each published HiDream-I1 and HiDream-E1 checkpoint is laid out and sampled.

Pure Python: the API process reads these for endpoint defaults and weight folders; the loaders in
pipelines.py and the loops in hidream_e1.py and image_to_image.py run them. O1's are in
hidream_o1/recipes.py.
"""

from __future__ import annotations

from dataclasses import dataclass

#: text_encoder_4 of every I1 and E1 pipeline, in its own folder: the published I1 repos do not ship it.
LLAMA_DIRECTORY = "Llama-3.1-8B-Instruct"
#: Latent side of the real weights: x8 VAE scale = 1024 px.
REAL_SAMPLE_SIZE = 128


@dataclass(frozen=True)
class Variant:
    """One HiDream-I1 checkpoint's recipe (HiDream-ai/HiDream-I1 inference.py MODEL_CONFIGS)."""

    name: str  # the model key
    directory: str  # sub-directory of the weights root, a diffusers folder
    repository: str
    steps: int
    guidance: float
    shift: float
    scheduler: str  # diffusers class name, as in the published scheduler config


FULL = Variant("full", "HiDream-I1-Full", "HiDream-ai/HiDream-I1-Full", 50, 5.0, 3.0, "UniPCMultistepScheduler")
DEV = Variant("dev", "HiDream-I1-Dev", "HiDream-ai/HiDream-I1-Dev", 28, 0.0, 6.0, "FlowMatchLCMScheduler")
FAST = Variant("fast", "HiDream-I1-Fast", "HiDream-ai/HiDream-I1-Fast", 16, 0.0, 3.0, "FlowMatchLCMScheduler")
VARIANTS = {variant.name: variant for variant in (FULL, DEV, FAST)}


@dataclass(frozen=True)
class EditRecipe:
    """One HiDream-E1 checkpoint: what it replaces of I1-Full, and at what size it edits
    (HiDream-ai/HiDream-E1 inference.py and inference_e1_1.py)."""

    key: str
    directory: str
    repository: str
    #: A LoRA file over I1-Full's transformer (E1-Full), or a whole transformer folder (E1.1).
    weights: str
    lora: bool
    #: E1-Full squeezes the whole image into a square; E1.1 keeps its aspect ratio at the same area.
    square: bool
    #: Latent side of the real weights: E1-Full edits at 768x768, E1.1 at about 1 MP.
    sample_size: int
    #: E1-Full was trained only on `Editing Instruction: ... Target Image Description: ...`; E1.1
    #: also takes a bare instruction (HiDream-E1 README).
    always_formatted: bool


E1_FULL = EditRecipe(
    "e1-full", "HiDream-E1-Full", "HiDream-ai/HiDream-E1-Full", "HiDream-E1-Full.safetensors", True, True, 96, True
)
E1_1 = EditRecipe(
    "e1-1", "HiDream-E1-1", "HiDream-ai/HiDream-E1-1", "transformer", False, False, REAL_SAMPLE_SIZE, False
)
EDIT_RECIPES = {recipe.key: recipe for recipe in (E1_FULL, E1_1)}
