"""Loading HiDream pipelines (I1, E1, O1) from a weights directory, the same code for real and tiny weights."""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hidream_service.inference.hidream_o1.recipes import RECIPES as O1_RECIPES
from hidream_service.inference.weights import E1_1, E1_FULL, WeightsLayout
from hidream_service.models.hidream_i1 import VARIANTS, Variant

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


def load_pipeline(layout: WeightsLayout, model: str, device: str, llama: tuple[Any, Any]) -> LoadedPipeline:
    """One model by key: an I1 variant, or E1 (E1-Full, E1.1) built on I1-Full's components."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    layout.check(model)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    refine = None
    transformer = None
    base = model
    if model == E1_FULL:
        from diffusers import HiDreamImageTransformer2DModel

        from hidream_service.inference.hidream_e1 import apply_e1_full

        base = "full"
        transformer = HiDreamImageTransformer2DModel.from_pretrained(
            layout.variant_dir(base), subfolder="transformer", dtype=dtype, local_files_only=True
        )
        refine = apply_e1_full(transformer, layout.e1_full_weights)
    elif model == E1_1:
        from hidream_service.inference.hidream_e1 import load_e1_1_transformer

        base = "full"
        transformer = load_e1_1_transformer(layout.variant_dir(base), layout.e1_1_transformer, dtype)
    pipeline = _load_i1_components(layout, VARIANTS[base], dtype, llama, transformer)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.default_sample_size = layout.default_sample_size(model)
    return LoadedPipeline(
        pipeline=pipeline,
        area_side=pipeline.default_sample_size * pipeline.vae_scale_factor,
        vae_scale_factor=pipeline.vae_scale_factor,
        refine=refine,
    )


def load_o1_pipeline(layout: WeightsLayout, model: str, device: str) -> LoadedPipeline:
    """HiDream-O1 (Full or Dev): one Qwen3-VL checkpoint folder, no other component."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hidream_service.inference.hidream_o1.geometry import CONDITION_IMAGE_SIZE
    from hidream_service.inference.hidream_o1.pipeline import HiDreamO1Pipeline

    layout.check(model)
    metadata = layout.service_metadata(model)
    pipeline = HiDreamO1Pipeline.load(
        layout.variant_dir(model),
        O1_RECIPES[model],
        device,
        divisor=metadata.get("resolution_divisor", 1),
        condition_image_size=metadata.get("condition_image_size", CONDITION_IMAGE_SIZE),
    )
    # No VAE: O1 works on pixels, at about keep_aspect_side**2 of them.
    return LoadedPipeline(pipeline=pipeline, area_side=pipeline.geometry.keep_aspect_side, vae_scale_factor=1)


def _load_i1_components(
    layout: WeightsLayout, variant: Variant, dtype: Any, llama: tuple[Any, Any], transformer: Any
) -> Any:
    from diffusers import HiDreamImagePipeline

    directory = layout.variant_dir(variant.name)
    tokenizer_4, text_encoder_4 = llama
    extra = {} if transformer is None else {"transformer": transformer}
    return HiDreamImagePipeline.from_pretrained(
        directory,
        scheduler=build_scheduler(variant, directory),
        tokenizer_4=tokenizer_4,
        text_encoder_4=text_encoder_4,
        dtype=dtype,
        local_files_only=True,
        **extra,
    )


def load_llama(layout: WeightsLayout, device: str) -> tuple[Any, Any]:
    """Llama-3.1-8B-Instruct (text_encoder_4), loaded from its own directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(layout.llama_dir, local_files_only=True)
    # The pipeline asks this model for every hidden state on each call.
    model = LlamaForCausalLM.from_pretrained(layout.llama_dir, dtype=dtype, local_files_only=True)
    return tokenizer, model.to(device).eval()


class PipelineCache:
    """Keeps up to `max_loaded` variants in memory; the Llama encoder is shared by all of them."""

    def __init__(self, layout: WeightsLayout, device: str, max_loaded: int = 1) -> None:
        self.layout = layout
        self.device = device
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, LoadedPipeline] = OrderedDict()
        self._llama: tuple[Any, Any] | None = None

    def get(self, model: str) -> LoadedPipeline:
        """The loaded pipeline of a model key (I1 variant name, e1-full, e1-1, o1 or o1-dev)."""
        if model in self._loaded:
            self._loaded.move_to_end(model)
            return self._loaded[model]
        while len(self._loaded) >= self.max_loaded:
            evicted, _ = self._loaded.popitem(last=False)
            log.info("unloading %s to make room", evicted)
            _free_accelerator_memory()
        quiet_loading()
        log.info("loading %s from %s on %s", model, self.layout.root, self.device)
        if model in O1_RECIPES:
            loaded = load_o1_pipeline(self.layout, model, self.device)
        else:
            if self._llama is None:  # only I1 and E1 use the Llama encoder
                self._llama = load_llama(self.layout, self.device)
            loaded = load_pipeline(self.layout, model, self.device, self._llama)
        self._loaded[model] = loaded
        return loaded


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
