"""The `loras` input, as fal's LoRA endpoints take it (`[{"path", "scale"}]`, up to three), shared by
the HiDream-I1 and HiDream-E1 inputs; and what their runners do with it.

The API fetches and checks each file at submit (api/lora_inputs.py) and writes its digest into the
job's input (`sha256`); a runner switches the files on around its model call (inference/loras.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from hidream_service.inference.lora_checks import HIDREAM_TRANSFORMER, TransformerShape
from hidream_service.models.base import InputError, RunContext, StrictInput

if TYPE_CHECKING:
    from hidream_service.inference.pipelines import PipelineCache

MAX_LORAS = 3
#: 0 leaves the model as it is, 1 applies a LoRA as trained; negative scales push away from it.
MIN_LORA_SCALE = -4.0
MAX_LORA_SCALE = 4.0
MAX_LORA_PATH_LENGTH = 2048
SHA256_PATTERN = "^[0-9a-f]{64}$"


class LoraWeight(StrictInput):
    """One LoRA of a request: fal's LoraWeight."""

    path: str = Field(
        min_length=1,
        max_length=MAX_LORA_PATH_LENGTH,
        description="A .safetensors file: an https URL, the URL of a file uploaded here, or a Hugging Face "
        "repository owner/repo[/file.safetensors][@revision] (on servers with hub access).",
    )
    scale: float = Field(
        default=1.0,
        ge=MIN_LORA_SCALE,
        le=MAX_LORA_SCALE,
        description="How strongly it applies, -4 to 4: 0 leaves the model unchanged, 1 applies it as trained.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="The file's SHA-256. Filled in at submit from the file fetched and checked; if sent, a file "
        "with another digest is refused.",
    )


Loras = Annotated[
    list[LoraWeight],
    Field(
        max_length=MAX_LORAS,
        description=f"Up to {MAX_LORAS} LoRAs of the HiDream-I1 transformer (diffusers or ComfyUI keys), each "
        "with its scale. Checked at submit; the same LoRAs and scales batch together.",
    ),
]


class TakesLoras(StrictInput):
    """An input with a `loras` field (declared by each input, last, where its form shows it), whose
    files must be LoRAs of `lora_target`."""

    lora_target: ClassVar[TransformerShape] = HIDREAM_TRANSFORMER

    if TYPE_CHECKING:
        loras: list[LoraWeight]

    def lora_key(self) -> tuple[tuple[str | None, float], ...]:
        """What jobs must share to run in one model call: the same files at the same scales."""
        return tuple((lora.sha256, lora.scale) for lora in self.loras)


class RefusesLoras(StrictInput):
    """An input whose model takes no LoRAs: `loras` is refused by name, with the reason (an empty
    list, which asks for none, is let through)."""

    lora_refusal: ClassVar[str] = "this model takes no LoRAs"

    @model_validator(mode="before")
    @classmethod
    def _no_loras(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("loras") == []:
            return {name: value for name, value in data.items() if name != "loras"}
        if isinstance(data, dict) and "loras" in data:
            refusal = PydanticCustomError("loras_not_supported", cls.lora_refusal)
            error = InitErrorDetails(type=refusal, loc=("loras",), input=data["loras"])
            raise ValidationError.from_exception_data(cls.__name__, [error])
        return data


@contextlib.contextmanager
def loras_applied(
    pipelines: PipelineCache, pipeline: Any, params: TakesLoras, contexts: Sequence[RunContext], refine: Any = None
) -> Iterator[None]:
    """The job's LoRAs on `pipeline` around a model call, each load logged to `contexts` (the jobs
    of a batch share their LoRAs). A LoRA that cannot be applied fails the job as a bad input."""
    from hidream_service.inference.loras import LoraUnavailable, RequestedLora

    def note(message: str) -> None:
        for ctx in contexts:
            ctx.log(message)

    requested = []
    for index, lora in enumerate(params.loras):
        if lora.sha256 is None:  # the API fills it in; a job from anywhere else did not pass through it
            raise InputError(f"loras[{index}] was never fetched and checked: submit the job through the API")
        requested.append(RequestedLora(lora.sha256, lora.scale))
    loras = pipelines.loras
    if loras is None:
        if not requested:
            yield
            return
        raise InputError("this worker has no LoRA cache configured")
    try:
        with loras.applied(pipeline, requested, refine=refine, note=note):
            yield
    except LoraUnavailable as exc:
        raise InputError(str(exc)) from None
