"""What makes a file a LoRA this service loads: a safetensors file (read from its header alone, never
unpickled) whose keys are LoRA pairs on modules of the HiDream transformer.

Two key layouts, the ones diffusers loads for HiDream (`HiDreamImageLoraLoaderMixin`):

- diffusers/PEFT: `transformer.<module>.lora_A.weight` and `.lora_B.weight`, as diffusers'
  `save_lora_weights` and its HiDream training script write them;
- ComfyUI (kohya-style trainers exporting for ComfyUI): the same keys under `diffusion_model.`,
  which diffusers renames (`_convert_non_diffusers_hidream_lora_to_diffusers`).

Anything else is refused by name, never loaded as a silent no-op: kohya's own `lora_unet_...` keys
and `lora_down`/`lora_up`/`alpha` tensors (diffusers converts those for other models, not for
HiDream), text-encoder LoRAs, full tensors, and keys naming modules the transformer does not have.

Pure Python: the API checks each file at submit without torch; a worker checks again against the
transformer it loaded (`TransformerShape.from_config`), shapes included.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: safetensors' own limit on a header (its Rust reader refuses more).
MAX_HEADER_BYTES = 100_000_000
HEADER_LENGTH_BYTES = 8
METADATA_KEY = "__metadata__"
#: Bytes per element of each safetensors dtype; a LoRA's tensors must be floating point.
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
LORA_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
LORA_A, LORA_B = "lora_A.weight", "lora_B.weight"
#: Where a pickled checkpoint shows itself: a protocol-2+ pickle, or the zip torch.save writes.
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


class LayoutName(enum.Enum):
    DIFFUSERS = "transformer."
    COMFYUI = "diffusion_model."

    @property
    def prefix(self) -> str:
        return self.value


class LoraFileError(ValueError):
    """The file is not a LoRA this service loads; the message says why, naming the first bad key."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets in the data part, after the header
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_offset: int  # where the tensors' bytes start in the file


def header_length(first_bytes: bytes, file_size: int) -> int:
    """The length of the JSON header from the file's first 8 bytes; LoraFileError if they cannot
    start a safetensors file of this size."""
    if first_bytes.startswith(PICKLE_MAGIC):
        raise LoraFileError(
            "this is a pickled checkpoint (a .pt/.bin/.ckpt file), which is never loaded here: send a .safetensors file"
        )
    if len(first_bytes) < HEADER_LENGTH_BYTES or file_size < HEADER_LENGTH_BYTES + 2:
        raise LoraFileError("not a safetensors file: it is too short")
    (length,) = struct.unpack("<Q", first_bytes[:HEADER_LENGTH_BYTES])
    if not 2 <= length <= min(MAX_HEADER_BYTES, file_size - HEADER_LENGTH_BYTES):
        raise LoraFileError("not a safetensors file: its first 8 bytes are not the length of a header it holds")
    return int(length)


def parse_header(header: bytes, file_size: int) -> SafetensorsHeader:
    """The tensors a safetensors header describes, each checked against the file's size."""
    try:
        document = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LoraFileError("not a safetensors file: its header is not JSON") from None
    if not isinstance(document, dict):
        raise LoraFileError("not a safetensors file: its header is not a JSON object")
    data_offset = HEADER_LENGTH_BYTES + len(header)
    data_size = file_size - data_offset
    metadata = document.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LoraFileError("not a safetensors file: its __metadata__ is not a map of strings")
    tensors: dict[str, TensorEntry] = {}
    for name, entry in document.items():
        tensors[name] = _tensor_entry(name, entry, data_size)
    if tensors and max(entry.end for entry in tensors.values()) != data_size:
        raise LoraFileError("not a safetensors file: its size does not match what its header describes")
    return SafetensorsHeader(tensors, metadata, data_offset)


def _tensor_entry(name: str, entry: Any, data_size: int) -> TensorEntry:
    if not isinstance(entry, dict):
        raise LoraFileError(f"not a safetensors file: the entry of '{name}' is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise LoraFileError(f"'{name}' has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(side, int) and side >= 0 for side in shape):
        raise LoraFileError(f"'{name}' has no valid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(offset, int) for offset in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
        or offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]
    ):
        raise LoraFileError(f"not a safetensors file: the data of '{name}' lies outside the file or has the wrong size")
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def read_header(data: bytes) -> SafetensorsHeader:
    """The header of a whole file held in memory."""
    length = header_length(data[:HEADER_LENGTH_BYTES], len(data))
    return parse_header(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length], len(data))


def read_header_of_file(path: Any) -> SafetensorsHeader:
    """The header of a file on disk, reading only the header's bytes."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        length = header_length(handle.read(HEADER_LENGTH_BYTES), size)
        return parse_header(handle.read(length), size)


@dataclass(frozen=True)
class TransformerShape:
    """The layout of a HiDream transformer (diffusers' HiDreamImageTransformer2DModel): which
    Linear modules it has, from the counts in its config."""

    num_layers: int  # double-stream blocks
    num_single_layers: int
    num_routed_experts: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TransformerShape:
        return cls(config["num_layers"], config["num_single_layers"], config["num_routed_experts"])

    @functools.cached_property
    def modules(self) -> frozenset[str]:
        """Every Linear module's dotted name: what a LoRA may target."""
        attention = ("to_q", "to_k", "to_v", "to_out")
        swiglu = ("w1", "w2", "w3")

        def mixture(prefix: str) -> list[str]:
            experts = [f"{prefix}.experts.{e}.{w}" for e in range(self.num_routed_experts) for w in swiglu]
            return [*experts, *(f"{prefix}.shared_experts.{w}" for w in swiglu)]

        names = [
            "x_embedder.proj",
            "t_embedder.timestep_embedder.linear_1",
            "t_embedder.timestep_embedder.linear_2",
            "p_embedder.pooled_embedder.linear_1",
            "p_embedder.pooled_embedder.linear_2",
            "final_layer.linear",
            "final_layer.adaLN_modulation.1",
            # A caption projection per block (of the Llama's states) and one more (of T5's).
            *(f"caption_projection.{index}.linear" for index in range(self.num_layers + self.num_single_layers + 1)),
        ]
        for index in range(self.num_layers):
            block = f"double_stream_blocks.{index}.block"
            names += [f"{block}.attn1.{name}{suffix}" for name in attention for suffix in ("", "_t")]
            names += [*mixture(f"{block}.ff_i"), *(f"{block}.ff_t.{w}" for w in swiglu), f"{block}.adaLN_modulation.1"]
        for index in range(self.num_single_layers):
            block = f"single_stream_blocks.{index}.block"
            names += [f"{block}.attn1.{name}" for name in attention]
            names += [*mixture(f"{block}.ff_i"), f"{block}.adaLN_modulation.1"]
        return frozenset(names)


#: HiDream-I1's transformer (its published transformer/config.json), which E1 edits with too.
HIDREAM_TRANSFORMER = TransformerShape(num_layers=16, num_single_layers=32, num_routed_experts=4)


@dataclass(frozen=True)
class ModulePair:
    """One module's low-rank pair: lora_A is [rank, in_features], lora_B [out_features, rank]."""

    a_key: str
    b_key: str
    rank: int
    in_features: int
    out_features: int


@dataclass(frozen=True)
class CheckedLora:
    layout: LayoutName
    modules: dict[str, ModulePair]  # module name -> its pair

    @property
    def rank(self) -> int:
        return max(pair.rank for pair in self.modules.values())


def _layout_problem(key: str) -> str | None:
    """Why a key is in a layout no loader here takes, in words a user can act on."""
    if key.startswith(("lora_unet_", "lora_te")):
        return (
            f"'{key}' is in kohya's lora_unet_ layout, which diffusers does not convert for HiDream: "
            "export the LoRA with diffusers (transformer.<module>.lora_A.weight) or for ComfyUI "
            "(diffusion_model.<module>.lora_A.weight)"
        )
    if key.endswith((".alpha", ".lora_down.weight", ".lora_up.weight")):
        return (
            f"'{key}' is a kohya lora_down/lora_up/alpha tensor, which diffusers does not load for HiDream: "
            "export the LoRA with lora_A/lora_B keys"
        )
    if key.startswith(("text_encoder", "te_", "te1", "te2")):
        return f"'{key}' targets a text encoder; only LoRAs of the transformer are loaded"
    return None


def check_lora(header: SafetensorsHeader, shape: TransformerShape) -> CheckedLora:
    """That every tensor is half of a LoRA pair on a module of `shape`, in one layout; else
    LoraFileError naming the first key (in sorted order) that is not."""
    keys = sorted(header.tensors)
    if not keys:
        raise LoraFileError("the file holds no tensors")
    layout = next((name for name in LayoutName if keys[0].startswith(name.prefix)), None)
    halves: dict[str, dict[str, TensorEntry]] = {}
    for key in keys:
        problem = _layout_problem(key)
        if problem is not None:
            raise LoraFileError(problem)
        if layout is None or not key.startswith(layout.prefix):
            raise LoraFileError(
                f"'{key}' is not a LoRA key of the HiDream transformer: keys must all begin with 'transformer.' "
                "(diffusers) or all with 'diffusion_model.' (ComfyUI)"
            )
        module, _, half = key[len(layout.prefix) :].rpartition(".lora_")
        if not module or f"lora_{half}" not in (LORA_A, LORA_B):
            raise LoraFileError(f"'{key}' is not a lora_A/lora_B weight: only LoRA pairs are loaded, no full tensors")
        if module not in shape.modules:
            raise LoraFileError(f"'{key}' targets '{module}', which the HiDream transformer does not have")
        entry = header.tensors[key]
        if entry.dtype not in LORA_DTYPES:
            raise LoraFileError(f"'{key}' is {entry.dtype}; LoRA weights must be F16, BF16, F32 or F64")
        if len(entry.shape) != 2 or 0 in entry.shape:
            raise LoraFileError(f"'{key}' has shape {list(entry.shape)}; a LoRA weight is a non-empty matrix")
        halves.setdefault(module, {})[f"lora_{half}"] = entry
    assert layout is not None  # every key began with its prefix
    pairs = {}
    for module, found in halves.items():
        a_key, b_key = f"{layout.prefix}{module}.{LORA_A}", f"{layout.prefix}{module}.{LORA_B}"
        if LORA_A not in found or LORA_B not in found:
            missing = a_key if LORA_A not in found else b_key
            raise LoraFileError(f"'{missing}' is missing: each module needs both halves of its pair")
        (rank, in_features), (out_features, rank_b) = found[LORA_A].shape, found[LORA_B].shape
        if rank != rank_b:
            raise LoraFileError(f"'{b_key}' has rank {rank_b} but '{a_key}' has rank {rank}")
        pairs[module] = ModulePair(a_key, b_key, rank, in_features, out_features)
    return CheckedLora(layout, pairs)
