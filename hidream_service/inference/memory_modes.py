"""Where an I1 or E1 pipeline's components live on a GPU too small to hold them all (`HIDREAM_MEMORY_MODE`).

| mode | kept on the GPU | brought to the GPU for their turn, one at a time |
| --- | --- | --- |
| `gpu` | everything | nothing |
| `encoders-offloaded` | transformer, VAE | the four text encoders, which run once per prompt |
| `model-offload` | VAE | text encoders and the transformer |
| `block-offload` | VAE | text encoders; the transformer streams through one block at a time |

A component that is not kept on the GPU is parked in CPU memory. Its forward pass brings it to the
GPU and sends the component there before it back (`Parking`); the forward of a component kept on
the GPU (the transformer, the VAE's encoder and decoder) sends back whichever one is there. So at
most one parked component is on the GPU at a time. Each encoder comes once per prompt encoded
(E1 encodes its target description as a second prompt); a parked transformer once per request,
and once more in a pipeline's first previewed request, whose preview fits its colour projection
with the VAE mid-loop. In `block-offload`, diffusers' group offloading moves the transformer's
blocks (and the rest of it as one more group) to the GPU as each runs, the next one prefetched on a
CUDA stream. The computation is the same in every mode, so the images are the same bytes.

How much GPU memory each needs is computed from the parameter counts below (docs/weights.md,
"Memory modes"); `hidream doctor` recommends the first mode that fits the GPU. O1 is a single
network (8.8B parameters, 16.4 GiB in bfloat16) and stays whole on the GPU in every mode.

Imports nothing heavy: the settings and `hidream doctor` read the enum and the figures.
"""

from __future__ import annotations

import collections
import enum
import weakref
from dataclasses import dataclass
from typing import Any

GIB = 1 << 30
BYTES_PER_PARAMETER = 2  # bfloat16, as every component runs on CUDA


class MemoryMode(enum.StrEnum):
    GPU = "gpu"
    ENCODERS_OFFLOADED = "encoders-offloaded"
    MODEL_OFFLOAD = "model-offload"
    BLOCK_OFFLOAD = "block-offload"


#: The pipeline's text encoders, in the order its encode_prompt runs them.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4")

#: Parameters of each component of an I1 (or E1) pipeline, counted on the meta device with diffusers
#: 0.42.1 and transformers 5.23 from the architectures' sizes: the transformer's from diffusers'
#: HiDream conversion script, the encoders' (CLIP-L and -G with 248 positions, T5 v1.1 XXL, Llama
#: 3.1 8B) from their model cards, not read from the HiDream repositories themselves.
PARAMETERS = {
    "transformer": 17_105_733_184,
    "text_encoder_4": 8_030_261_248,  # Llama-3.1-8B-Instruct, its 0.53B lm_head included
    "text_encoder_3": 4_893_906_944,  # T5-XXL's encoder
    "text_encoder_2": 694_878_720,  # CLIP-G
    "text_encoder": 123_781_632,  # CLIP-L
    "vae": 83_821_011,
}
#: The transformer's largest block (each of its 16 double-stream blocks; a single-stream one has
#: 305M) and what is not in a block list (embedders and final layer), for `block-offload`.
LARGEST_TRANSFORMER_BLOCK = 424_089_600
TRANSFORMER_OUTSIDE_BLOCKS = 32_458_304
#: Blocks on the GPU at once in `block-offload`: the running one and the next, prefetched.
BLOCKS_ON_GPU = 2
#: Estimated, not measured: the CUDA context and the largest activations of one 1024x1024 image
#: (the VAE decode, about 2-3 GiB). More images per request need more.
HEADROOM_GIB = 4.0


def gib(parameters: int) -> float:
    return parameters * BYTES_PER_PARAMETER / GIB


def peak_weights_gib(mode: MemoryMode) -> float:
    """GiB of weights on the GPU at the busiest moment of a request, in `mode` (computed)."""
    encoder = max(gib(PARAMETERS[name]) for name in TEXT_ENCODERS)
    vae = gib(PARAMETERS["vae"])
    transformer = gib(PARAMETERS["transformer"])
    if mode is MemoryMode.GPU:
        return sum(gib(count) for count in PARAMETERS.values())
    if mode is MemoryMode.ENCODERS_OFFLOADED:
        return transformer + vae + encoder
    if mode is MemoryMode.MODEL_OFFLOAD:
        return vae + max(transformer, encoder)
    streamed = gib(BLOCKS_ON_GPU * LARGEST_TRANSFORMER_BLOCK + TRANSFORMER_OUTSIDE_BLOCKS)
    return vae + max(streamed, encoder)


def needed_gib(mode: MemoryMode) -> float:
    """GPU memory `mode` needs: its peak weights and the estimated headroom."""
    return peak_weights_gib(mode) + HEADROOM_GIB


def recommended_mode(gpu_gib: float) -> MemoryMode | None:
    """The mode that keeps the most on a GPU of `gpu_gib`; None when none fits."""
    return next((mode for mode in MemoryMode if needed_gib(mode) <= gpu_gib), None)


class Parking:
    """Modules parked on `parking_device` that visit `execution_device` one at a time: a parked
    module's forward brings it over and sends the module there before it back. One per worker
    (its PipelineCache), since pipelines share modules (the Llama encoder)."""

    def __init__(self, execution_device: str, parking_device: str = "cpu") -> None:
        self.execution_device = execution_device
        self.parking_device = parking_device
        self._visitor: weakref.ref[Any] | None = None
        self._visitor_name = ""
        #: The latest moves, ("in" | "back", component): what the tests and a debugging session read.
        self.moves: collections.deque[tuple[str, str]] = collections.deque(maxlen=64)

    def admit(self, module: Any, name: str) -> None:
        """Park `module` now; each of its forward passes brings it to the execution device first."""
        if self._hook(module, "visit", lambda *_: self.visit(module, name)):
            module.to(self.parking_device)

    def clear_before(self, module: Any) -> None:
        """`module` stays where it is; its forward passes send the visiting module back first."""
        self._hook(module, "clear", lambda *_: self.send_back())

    def visit(self, module: Any, name: str) -> None:
        visitor = self._visitor() if self._visitor is not None else None
        if visitor is module:
            return
        self.send_back()
        module.to(self.execution_device)
        self._visitor, self._visitor_name = weakref.ref(module), name
        self.moves.append(("in", name))

    def send_back(self) -> None:
        """The visiting module, if any, back to the parking device."""
        visitor = self._visitor() if self._visitor is not None else None
        self._visitor = None
        if visitor is not None:
            visitor.to(self.parking_device)
            self.moves.append(("back", self._visitor_name))

    def _hook(self, module: Any, role: str, hook: Any) -> bool:
        """Register `hook` before `module`'s forward, once per parking and role; False if it was."""
        attribute = f"_hidream_parking_{role}"
        registered = getattr(module, attribute, None)
        if registered is not None and registered[0] is self:
            return False
        if registered is not None:
            registered[1].remove()  # placed by an earlier worker's parking
        setattr(module, attribute, (self, module.register_forward_pre_hook(hook)))
        return True


@dataclass(frozen=True)
class Placement:
    """A worker's memory mode and its parking: where each loaded pipeline's components go."""

    mode: MemoryMode
    parking: Parking

    @classmethod
    def for_device(cls, mode: MemoryMode | str, device: str, parking_device: str = "cpu") -> Placement:
        return cls(MemoryMode(mode), Parking(device, parking_device))

    def place(self, pipeline: Any) -> None:
        """Put a loaded diffusers HiDream pipeline's components where the mode keeps them."""
        device = self.parking.execution_device
        if self.mode is MemoryMode.GPU:
            pipeline.to(device)
            return
        # The VAE is small (0.16 GiB) and stays: previews decode with it in the middle of the loop.
        pipeline.vae.to(device)
        for part in (pipeline.vae.encoder, pipeline.vae.decoder):
            self.parking.clear_before(part)
        for name in TEXT_ENCODERS:
            self.parking.admit(getattr(pipeline, name), name)
        transformer = pipeline.transformer
        if self.mode is MemoryMode.MODEL_OFFLOAD:
            self.parking.admit(transformer, "transformer")
            return
        self.parking.clear_before(transformer)
        if self.mode is MemoryMode.ENCODERS_OFFLOADED:
            transformer.to(device)
            return
        self._stream_blocks(transformer)

    def _stream_blocks(self, transformer: Any) -> None:
        import torch

        cuda = torch.device(self.parking.execution_device).type == "cuda"
        transformer.enable_group_offload(
            onload_device=torch.device(self.parking.execution_device),
            offload_device=torch.device(self.parking.parking_device),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=cuda,  # prefetch the next block while this one runs
        )

    def release(self) -> None:
        """Send the visiting component back: its pipeline is being unloaded."""
        self.parking.send_back()
