"""Request LoRAs on a loaded HiDream pipeline, through diffusers' adapter API.

Each file is loaded once per worker as an adapter of the pipeline's transformer
(`load_lora_weights`, safetensors only), at most `max_loaded` per pipeline (the least recently used
is deleted first). A job that asks for LoRAs switches them on with its scales (`set_adapters`) and
off again when it ends (`disable_adapters`), so the next job without LoRAs runs the transformer
exactly as one that never loaded any: a disabled PEFT layer calls its base layer and nothing else.

E1-Full's transformer carries its own adapter (hidream_e1.RefineSwitch). The request's LoRAs go on
beside it, in both of its stages: its refine stage is plain I1-Full text-to-image refinement, where
an I1 LoRA applies as it was trained, and it switches off only E1's own adapter. When the job ends,
E1's adapter alone is active again, at scale 1, as it was loaded.

Files come from the LoRA cache (lora_cache.py), where the API stored them at submit: a worker never
waits on the network for one.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from hidream_service.inference.lora_cache import LoraCache
from hidream_service.inference.lora_checks import CheckedLora, LoraFileError, TransformerShape, check_lora
from hidream_service.inference.lora_checks import read_header_of_file as read_header

log = logging.getLogger(__name__)

#: diffusers names each adapter; ours are named by their file's digest, so a name is a content.
ADAPTER_PREFIX = "request-"


@dataclass(frozen=True)
class RequestedLora:
    digest: str  # sha256 of the file, as the API stored it
    scale: float


class LoraUnavailable(Exception):
    """A job's LoRA cannot be applied (not in the cache, or not fit for this transformer)."""


def adapter_name(digest: str) -> str:
    return f"{ADAPTER_PREFIX}{digest[:24]}"


def merged(loras: Sequence[RequestedLora]) -> list[RequestedLora]:
    """One entry per file: the same file twice is the file at the sum of its scales (a LoRA's
    effect is linear in its scale), as one adapter can be active only once."""
    scales: dict[str, float] = {}
    for lora in loras:
        scales[lora.digest] = scales.get(lora.digest, 0.0) + lora.scale
    return [RequestedLora(digest, scale) for digest, scale in scales.items()]


@dataclass
class _Adapters:
    """The request adapters loaded into one pipeline's transformer."""

    loaded: OrderedDict[str, str] = field(default_factory=OrderedDict)  # digest -> name, oldest use first
    on: bool = False  # switched on for a running job


class RequestLoras:
    """A worker's request LoRAs: the cache it reads files from and the adapters in each pipeline."""

    def __init__(self, cache: LoraCache, max_loaded: int) -> None:
        self.cache = cache
        self.max_loaded = max_loaded
        # Keyed by the pipeline: an unloaded pipeline (PipelineCache eviction) takes its entry along.
        self._pipelines: weakref.WeakKeyDictionary[Any, _Adapters] = weakref.WeakKeyDictionary()

    def loaded(self, pipeline: Any) -> list[str]:
        """Digests of the adapters loaded into `pipeline`, least recently used first."""
        adapters = self._pipelines.get(pipeline)
        return [] if adapters is None else list(adapters.loaded)

    @contextlib.contextmanager
    def applied(
        self,
        pipeline: Any,
        loras: Sequence[RequestedLora],
        *,
        refine: Any = None,
        note: Callable[[str], None] = lambda message: None,
    ) -> Iterator[None]:
        """`loras` on for the duration, at their scales; off again after. `refine` is E1-Full's
        RefineSwitch, whose own adapter stays on beside them. `note` hears what was loaded."""
        adapters = self._pipelines.setdefault(pipeline, _Adapters())
        if adapters.on:  # a previous job's switch-off failed: never let its LoRAs into this one
            _switch_off(pipeline.transformer, refine)
            adapters.on = False
        wanted = merged(loras)
        if not wanted:
            yield
            return
        names = [self._ensure_loaded(pipeline, adapters, lora, {w.digest for w in wanted}, note) for lora in wanted]
        adapters.on = True
        try:
            _switch_on(pipeline.transformer, names, [lora.scale for lora in wanted], refine)
            yield
        finally:
            _switch_off(pipeline.transformer, refine)
            adapters.on = False

    def _ensure_loaded(
        self, pipeline: Any, adapters: _Adapters, lora: RequestedLora, keep: set[str], note: Callable[[str], None]
    ) -> str:
        name = adapter_name(lora.digest)
        if lora.digest in adapters.loaded:
            adapters.loaded.move_to_end(lora.digest)
            self.cache.find(lora.digest)  # a use: keeps the file from eviction while it is in demand
            return name
        path = self.cache.find(lora.digest)
        if path is None:
            raise LoraUnavailable(
                f"LoRA {lora.digest[:12]} is not in the LoRA cache ({self.cache.directory}): it left the cache after "
                "the job was submitted (HIDREAM_LORA_CACHE_BYTES), or this worker does not share "
                "HIDREAM_LORA_CACHE_DIR with the API; submit the job again"
            )
        try:
            checked = fits(pipeline.transformer, read_header(path))
        except LoraFileError as exc:
            raise LoraUnavailable(f"LoRA {lora.digest[:12]} does not fit this model: {exc}") from None
        for digest in [digest for digest in adapters.loaded if digest not in keep]:
            if len(adapters.loaded) < self.max_loaded:
                break
            pipeline.delete_adapters([adapters.loaded.pop(digest)])
            log.info("unloaded LoRA %s to make room", digest[:12])
        started = time.perf_counter()
        with _quiet_adapter_loading():
            pipeline.load_lora_weights(
                str(path.parent), weight_name=path.name, adapter_name=name, use_safetensors=True
            )  # use_safetensors=True: diffusers never falls back to unpickling
        adapters.loaded[lora.digest] = name
        note(
            f"loaded LoRA {lora.digest[:12]} ({checked.layout.name.lower()} layout, rank {checked.rank}, "
            f"{len(checked.modules)} modules) in {time.perf_counter() - started:.2f} s"
        )
        return name


def fits(transformer: Any, header: Any) -> CheckedLora:
    """The file checked against the transformer it goes into: its modules exist in it (with this
    model's own counts of blocks and experts) and each pair's shape matches its layer's."""
    checked = check_lora(header, TransformerShape.from_config(transformer.config))
    for module, pair in checked.modules.items():
        layer = transformer.get_submodule(module)
        if (layer.in_features, layer.out_features) != (pair.in_features, pair.out_features):
            raise LoraFileError(
                f"'{pair.a_key}' is for a {pair.in_features}->{pair.out_features} layer; this model's '{module}' "
                f"is {layer.in_features}->{layer.out_features}"
            )
    return checked


def _switch_on(transformer: Any, names: list[str], scales: list[float], refine: Any) -> None:
    if refine is not None:
        refine.requested = tuple(zip(names, scales, strict=True))
        refine.editing()
        return
    transformer.enable_adapters()
    transformer.set_adapters(names, scales)


def _switch_off(transformer: Any, refine: Any) -> None:
    if refine is not None:
        refine.requested = ()
        refine.editing()  # E1's own adapter alone, as loaded
        return
    transformer.disable_adapters()


@contextlib.contextmanager
def _quiet_adapter_loading() -> Iterator[None]:
    """Two notices diffusers and PEFT give whenever a second adapter joins a model, expected here:
    PEFT's warning that the model has adapters already, and diffusers' log line listing the other
    adapters' keys as "missing" from this file (thousands of them for a real model)."""
    peft_logger = logging.getLogger("diffusers.loaders.peft")

    def not_about_other_adapters(record: logging.LogRecord) -> bool:
        return "led to missing keys" not in record.getMessage()

    peft_logger.addFilter(not_about_other_adapters)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        peft_logger.removeFilter(not_about_other_adapters)
