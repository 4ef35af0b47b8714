"""A model family: everything the service knows about one family of models, in one object.

    ModelFamily ── endpoints: fal app id, input model, task, name in each other dialect
        │       ── models it loads (keys such as full, e1-1, o1-dev): weight folders and sources,
        │          whether a weights directory has them, tiny random-weight stand-ins
        │       ── load(model)          a worker loads one model once (PipelineCache)
        └────────── runner(endpoint)    runs one job, or a batch of compatible jobs

The registry (registry.py) is a list of families. The worker, the pipeline cache, Modal's dispatch,
the catalogue and the dialects ask a family or an endpoint; none of them compares family or model
names. A family's module is the only place that knows what its model keys mean.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from hidream_service.models.base import Runner, StrictInput
from hidream_service.models.image_fields import image_fields
from hidream_service.models.sizes import too_elongated

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import LoadedPipeline, PipelineCache
    from hidream_service.inference.sources import WeightSource
    from hidream_service.inference.weights import WeightsLayout


class Task(enum.Enum):
    """What an endpoint does, in words every dialect knows: a dialect chooses the input shape its
    clients send for an endpoint by its task, never by its family."""

    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"  # one image re-rendered from a prompt, `strength` of the way
    INSTRUCTION_EDIT = "instruction-edit"  # one image changed as an instruction says
    REFERENCE_EDIT = "reference-edit"  # one image edited, or several subjects composed, as a prompt says
    LIFECYCLE = "lifecycle"  # no model: the job lifecycle only

    @property
    def takes_images(self) -> bool:
        return self in (Task.IMAGE_TO_IMAGE, Task.INSTRUCTION_EDIT, Task.REFERENCE_EDIT)


@dataclass(frozen=True, eq=False)
class Endpoint:
    """One fal app id the service answers to."""

    id: str  # the fal app id, the canonical name every dialect maps to
    title: str
    input_model: type[StrictInput]
    task: Task
    family: ModelFamily = field(repr=False)
    model: str | None = None  # key of the model it runs; None: it needs no weights
    #: Its name in each other dialect that lists it, by the dialect's id ("replicate", "wavespeed", "openai").
    names: Mapping[str, str] = field(default_factory=dict)

    @functools.cached_property
    def image_fields(self) -> tuple[str, ...]:
        """Inputs holding image URLs, fetched and checked at submit: read from the input schema, as
        the catalogue publishes them, so that the two cannot disagree."""
        return tuple(found.name for found in image_fields(self.input_model.model_json_schema()))

    @functools.cached_property
    def max_images(self) -> int:
        """How many image inputs one request may carry (a list input counts up to its maxItems)."""
        schema = self.input_model.model_json_schema()
        count = 0
        for found in image_fields(schema):
            prop = schema["properties"][found.name]
            options = [prop, *prop.get("anyOf", ())]
            count += max((option.get("maxItems", 1) for option in options), default=1) if found.multiple else 1
        return count

    @property
    def needs_weights(self) -> bool:
        return self.model is not None

    def parse(self, raw: Mapping[str, Any]) -> BaseModel:
        """The job's input as its input model: the one parse a stage does (raises ValidationError)."""
        return self.input_model.model_validate(raw)

    def image_shape_problem(self, width: int, height: int, job_input: Mapping[str, Any]) -> str | None:
        """Why an image input of this size cannot be used by this job, or None."""
        return self.family.image_shape_problem(self, width, height, job_input)


class ModelFamily:
    """The base every family extends. A subclass sets `name` and `endpoints` (and, with weights,
    `models`) and overrides what its models need; the defaults suit a family without weights."""

    name: str
    endpoints: tuple[Endpoint, ...] = ()
    #: Keys of the models it loads; unique across the registry (Modal runs one container pool per key).
    models: tuple[str, ...] = ()

    # -- weights ---------------------------------------------------------------------------------

    def sources(self) -> Mapping[str, tuple[WeightSource, ...]]:
        """What `hidream weights download NAME` (on Modal, `download_weights --model NAME`) fetches
        for each of its download names: a model's `model_sources`."""
        return {}

    def model_sources(self, model: str) -> tuple[WeightSource, ...]:
        """The repositories a model loads from: its own and everything it loads with; () for none."""
        return ()

    def available_models(self, layout: WeightsLayout) -> set[str]:
        """Keys of its models whose folders a (real) weights directory holds."""
        return set()

    def check_weights(self, layout: WeightsLayout, model: str) -> None:
        """Raise WeightsError naming the first missing or mismatched piece of `model`'s weights."""

    def build_tiny(self, root: Path) -> None:
        """Write tiny random-weight stand-ins of its models under `root`, laid out like real ones."""

    # -- running ---------------------------------------------------------------------------------

    def load(self, model: str, pipelines: PipelineCache) -> LoadedPipeline:
        """Load one of its models (in a worker, once): the cache gives the layout, the device and
        components shared between models."""
        raise NotImplementedError(f"{self.name} has no models to load")

    def runner(self, endpoint: Endpoint, pipelines: Callable[[], PipelineCache]) -> Runner:
        """What runs `endpoint`'s jobs. `pipelines` gives the worker's cache, made on first call."""
        raise NotImplementedError

    def image_shape_problem(
        self, endpoint: Endpoint, width: int, height: int, job_input: Mapping[str, Any]
    ) -> str | None:
        """HiDream renders at most 128 patches a side, so nothing more elongated than MAX_ASPECT_RATIO."""
        problem = too_elongated(width, height, "the image")
        return None if problem is None else f"{problem}; crop it first"

    def endpoint(
        self,
        id: str,
        title: str,
        input_model: type[StrictInput],
        task: Task,
        model: str | None = None,
        **names: str,
    ) -> Endpoint:
        """One of this family's endpoints; `names` by dialect id, e.g. replicate="owner/name"."""
        return Endpoint(id, title, input_model, task, self, model, dict(names))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
