"""The registry: the model families this service serves, and what it asks of them as a whole.

To add a family, write its module (see docs/architecture.md, "Add a model family") and put its
object in FAMILIES below; or, without touching this package, pass `Registry([*FAMILIES, yours])`
to `create_app`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from hidream_service.models.family import Endpoint, ModelFamily
from hidream_service.models.hidream_e1 import HIDREAM_E1
from hidream_service.models.hidream_i1 import HIDREAM_I1
from hidream_service.models.hidream_o1 import HIDREAM_O1
from hidream_service.models.noop import NOOP

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import LoadedPipeline, PipelineCache
    from hidream_service.inference.sources import WeightSource
    from hidream_service.inference.weights import WeightsLayout

#: Every family the service serves, in the order tiny weights are built (E1 builds on I1-Full's).
FAMILIES: tuple[ModelFamily, ...] = (NOOP, HIDREAM_I1, HIDREAM_E1, HIDREAM_O1)

#: `hidream weights download all` (on Modal, `download_weights --model all`)
ALL = "all"


class Registry:
    """A list of families, looked up by endpoint id and model key."""

    def __init__(self, families: Iterable[ModelFamily]) -> None:
        self.families = tuple(families)
        self.endpoints: dict[str, Endpoint] = {}
        self._model_families: dict[str, ModelFamily] = {}
        for family in self.families:
            for endpoint in family.endpoints:
                if endpoint.id in self.endpoints:
                    raise ValueError(f"endpoint {endpoint.id} is declared twice ({family.name})")
                self.endpoints[endpoint.id] = endpoint
            for model in family.models:
                if model in self._model_families:
                    raise ValueError(f"model key {model} is declared twice ({family.name})")
                self._model_families[model] = family

    def __reduce__(self) -> tuple[type[Registry], tuple[tuple[ModelFamily, ...]]]:
        # Worker processes receive the registry pickled; the cached tables are rebuilt there.
        return (Registry, (self.families,))

    # -- endpoints -------------------------------------------------------------------------------

    def served(self, layout: WeightsLayout | None) -> dict[str, Endpoint]:
        """The endpoints this server answers: those needing no weights, plus those whose model the
        layout has (tiny weights have every model: the worker builds them on first use)."""
        if layout is None:
            available: set[str] = set()
        elif layout.tiny:
            available = set(self._model_families)
        else:
            available = self.available_models(layout)
        return self.served_models(available)

    def served_models(self, available: set[str]) -> dict[str, Endpoint]:
        """The endpoints needing no weights, plus those of the `available` models."""
        return {
            endpoint_id: endpoint
            for endpoint_id, endpoint in self.endpoints.items()
            if endpoint.model is None or endpoint.model in available
        }

    def endpoint_for_model(self, model: str) -> Endpoint:
        """An endpoint that runs `model` (to preload it through the endpoint's runner)."""
        return next(endpoint for endpoint in self.endpoints.values() if endpoint.model == model)

    # -- weights ---------------------------------------------------------------------------------

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._model_families)

    def family_of(self, model: str) -> ModelFamily:
        try:
            return self._model_families[model]
        except KeyError:
            raise KeyError(f"no family loads a model named {model!r}; known: {', '.join(self.models)}") from None

    def available_models(self, layout: WeightsLayout) -> set[str]:
        return {model for family in self.families for model in family.available_models(layout)}

    def check_weights(self, layout: WeightsLayout, model: str) -> None:
        self.family_of(model).check_weights(layout, model)

    def model_sources(self, model: str) -> tuple[WeightSource, ...]:
        """The repositories one model key loads from."""
        return self.family_of(model).model_sources(model)

    def downloads(self) -> dict[str, tuple[WeightSource, ...]]:
        """Download name -> the sources it fetches, over every family."""
        return {name: sources for family in self.families for name, sources in family.sources().items()}

    def sources_for(self, name: str) -> tuple[WeightSource, ...]:
        """The sources of one download name, or of every model for `all`; each source once."""
        downloads = self.downloads()
        if name == ALL:
            return tuple({source.repo: source for group in downloads.values() for source in group}.values())
        if name not in downloads:
            raise ValueError(f"unknown model {name!r}; choose one of: {', '.join([*downloads, ALL])}")
        return downloads[name]

    def build_tiny(self, root: Path) -> None:
        """Every family's tiny weights under `root`, in registry order."""
        for family in self.families:
            family.build_tiny(root)

    def ensure_tiny_weights(self, layout: WeightsLayout) -> None:
        """Build every family's tiny weights once (again if the families changed since)."""
        from hidream_service.inference.tiny import ensure_tiny_weights

        ensure_tiny_weights(layout, self.build_tiny, [family.name for family in self.families])

    def load(self, pipelines: PipelineCache, model: str) -> LoadedPipeline:
        """The PipelineCache's loader: the model's family loads it (checking its weights first)."""
        family = self.family_of(model)
        family.check_weights(pipelines.layout, model)
        return family.load(model, pipelines)

    def pipelines(
        self,
        layout: WeightsLayout,
        device: str,
        max_loaded: int = 1,
        on_loaded: Callable[[str, float], None] = lambda model, seconds: None,
        memory_mode: str = "gpu",
    ) -> PipelineCache:
        from hidream_service.inference.pipelines import PipelineCache

        return PipelineCache(layout, device, self.load, max_loaded, on_loaded, memory_mode)


#: The registry `hidream serve` and the Modal deployment serve.
DEFAULT_REGISTRY = Registry(FAMILIES)
