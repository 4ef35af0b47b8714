"""Loading HiDream pipelines (I1, E1, O1) from their folders, the same code for real and tiny weights,
and the cache a worker keeps them in. Which folders and recipe a model uses is its family's business
(hidream_service/models/); these loaders take them as arguments."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hidream_service.inference.hidream_o1.recipes import Recipe
from hidream_service.inference.memory_modes import MemoryMode, Placement
from hidream_service.inference.recipes import EditRecipe, Variant
from hidream_service.inference.weights import WeightsLayout

T = TypeVar("T")

log = logging.getLogger(__name__)


def quiet_loading() -> None:
    """No progress bars from diffusers/transformers: they would fill the server log."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def pick_device(preference: str) -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def build_scheduler(variant: Variant, variant_dir: Path | None) -> Any:
    """The variant's scheduler: the published config when there is one, with the recipe's shift enforced.

    Full runs UniPC on flow sigmas (shift 3.0); Dev and Fast run FlowMatchLCM (shift 6.0 and 3.0).
    """
    import diffusers

    config: dict[str, Any] = {"num_train_timesteps": 1000}
    published = None if variant_dir is None else variant_dir / "scheduler" / "scheduler_config.json"
    if published is not None and published.is_file():
        stored = json.loads(published.read_text())
        if stored.get("_class_name") == variant.scheduler:
            config = stored
        else:
            log.warning(
                "%s ships %s; using %s as the %s recipe requires",
                published,
                stored.get("_class_name"),
                variant.scheduler,
                variant.name,
            )
    scheduler_class = getattr(diffusers, variant.scheduler)
    if variant.scheduler == "UniPCMultistepScheduler":
        overrides = {
            "prediction_type": "flow_prediction",
            "use_flow_sigmas": True,
            "flow_shift": variant.shift,
        }
    else:
        overrides = {"shift": variant.shift}
    return scheduler_class.from_config(config, **overrides)


@dataclass
class LoadedPipeline:
    pipeline: Any
    area_side: int  # rendered images cover area_side**2 pixels
    vae_scale_factor: int
    refine: Any = None  # E1-Full: switches its transformer between editing and refine weights
    #: Loaded on the CPU, to be put on the device as the worker's memory mode says (the cache does it).
    placed_by_mode: bool = False


def dtype_for(device: str) -> Any:
    import torch

    return torch.bfloat16 if device == "cuda" else torch.float32


def load_i1(
    directory: Path,
    variant: Variant,
    device: str,
    llama: tuple[Any, Any],
    sample_size: int,
    transformer: Any = None,
    refine: Any = None,
) -> LoadedPipeline:
    """diffusers' HiDreamImagePipeline from an I1 variant's folder, with the shared Llama encoder and,
    for E1, its own transformer in place of the variant's; on the CPU, in `device`'s dtype, until the
    cache places it (memory_modes.py)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import HiDreamImagePipeline

    tokenizer_4, text_encoder_4 = llama
    extra = {} if transformer is None else {"transformer": transformer}
    pipeline = HiDreamImagePipeline.from_pretrained(
        directory,
        scheduler=build_scheduler(variant, directory),
        tokenizer_4=tokenizer_4,
        text_encoder_4=text_encoder_4,
        dtype=dtype_for(device),
        local_files_only=True,
        **extra,
    )
    pipeline.set_progress_bar_config(disable=True)
    pipeline.default_sample_size = sample_size
    return LoadedPipeline(
        pipeline=pipeline,
        area_side=pipeline.default_sample_size * pipeline.vae_scale_factor,
        vae_scale_factor=pipeline.vae_scale_factor,
        refine=refine,
        placed_by_mode=True,
    )


def load_e1(
    base_directory: Path,
    base: Variant,
    recipe: EditRecipe,
    directory: Path,
    device: str,
    llama: tuple[Any, Any],
    sample_size: int,
) -> LoadedPipeline:
    """E1 (E1-Full or E1.1): I1-Full's components around E1's transformer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hidream_service.inference.hidream_e1 import apply_e1_full, load_e1_1_transformer

    dtype = dtype_for(device)
    refine = None
    if recipe.lora:
        from diffusers import HiDreamImageTransformer2DModel

        transformer = HiDreamImageTransformer2DModel.from_pretrained(
            base_directory, subfolder="transformer", dtype=dtype, local_files_only=True
        )
        refine = apply_e1_full(transformer, directory / recipe.weights)
    else:
        transformer = load_e1_1_transformer(base_directory, directory / recipe.weights, dtype)
    return load_i1(base_directory, base, device, llama, sample_size, transformer=transformer, refine=refine)


def load_o1(directory: Path, recipe: Recipe, device: str, metadata: dict[str, int]) -> LoadedPipeline:
    """HiDream-O1 (Full or Dev): one Qwen3-VL checkpoint folder, no other component."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hidream_service.inference.hidream_o1.geometry import CONDITION_IMAGE_SIZE
    from hidream_service.inference.hidream_o1.pipeline import HiDreamO1Pipeline

    pipeline = HiDreamO1Pipeline.load(
        directory,
        recipe,
        device,
        divisor=metadata.get("resolution_divisor", 1),
        condition_image_size=metadata.get("condition_image_size", CONDITION_IMAGE_SIZE),
    )
    # No VAE: O1 works on pixels, at about keep_aspect_side**2 of them.
    return LoadedPipeline(pipeline=pipeline, area_side=pipeline.geometry.keep_aspect_side, vae_scale_factor=1)


def load_llama(directory: Path, device: str) -> tuple[Any, Any]:
    """Llama-3.1-8B-Instruct (text_encoder_4), loaded from its own directory, on the CPU until the
    pipelines it is in are placed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    # The pipeline asks this model for every hidden state on each call.
    model = LlamaForCausalLM.from_pretrained(directory, dtype=dtype_for(device), local_files_only=True)
    return tokenizer, model.eval()


#: How a cache loads one model by its key: the registry asks the model's family.
Loader = Callable[["PipelineCache", str], LoadedPipeline]


class PipelineCache:
    """A worker's loaded models: up to `max_loaded` of them, least recently used out first. Parts
    that several models share (HiDream's Llama encoder) are loaded once and kept (`shared`). I1 and
    E1 pipelines go on the device as `memory_mode` says; `parking_device` holds what is off it."""

    def __init__(
        self,
        layout: WeightsLayout,
        device: str,
        load: Loader,
        max_loaded: int = 1,
        on_loaded: Callable[[str, float], None] = lambda model, seconds: None,
        memory_mode: MemoryMode | str = MemoryMode.GPU,
        parking_device: str = "cpu",
    ) -> None:
        self.layout = layout
        self.device = device
        self.placement = Placement.for_device(memory_mode, device, parking_device)
        self.max_loaded = max_loaded
        self._load = load
        self._on_loaded = on_loaded  # (model key, seconds the load took), for the metrics
        self._loaded: OrderedDict[str, LoadedPipeline] = OrderedDict()
        self._shared: dict[str, Any] = {}
        #: Request LoRAs (inference/loras.py RequestLoras): set by the worker, None where none are served.
        self.loras: Any = None

    def get(self, model: str) -> LoadedPipeline:
        """The loaded pipeline of a model key (full, e1-1, o1-dev, ...)."""
        if model in self._loaded:
            self._loaded.move_to_end(model)
            return self._loaded[model]
        while len(self._loaded) >= self.max_loaded:
            evicted, _ = self._loaded.popitem(last=False)
            log.info("unloading %s to make room", evicted)
            self.placement.release()
            _free_accelerator_memory()
        quiet_loading()
        log.info("loading %s from %s on %s, memory mode %s", model, self.layout.root, self.device, self.placement.mode)
        started = time.perf_counter()
        loaded = self._load(self, model)
        if loaded.placed_by_mode:
            self.placement.place(loaded.pipeline)
        self._on_loaded(model, time.perf_counter() - started)
        self._loaded[model] = loaded
        return loaded

    def shared(self, name: str, build: Callable[[], T]) -> T:
        """A component several models load with, built on first use and kept for the worker's life."""
        if name not in self._shared:
            self._shared[name] = build()
        value: T = self._shared[name]
        return value


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
