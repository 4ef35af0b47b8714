"""HiDream-O1's network on transformers 5.x: Qwen3-VL with the parts O1 changes.

O1 is a Qwen3-VL-8B (text decoder and vision encoder) that also denoises raw pixels. The official
release ships a patched copy of transformers 4.57's Qwen3-VL file; here we subclass the installed
classes and add or override only what O1 changes:

- `x_embedder`: 32x32 RGB patches enter the decoder through a linear bottleneck (hidden/4).
- `t_embedder1`: the timestep, as a sinusoidal embedding through an MLP, replaces the embedding of
  the `<|tms_token|>` that ends the prompt.
- `final_layer2`: a linear head turns the decoder's output at each target patch into a prediction
  of that clean patch (x-prediction); the pipeline turns it into a flow velocity.
- Attention: prompt tokens attend causally among themselves; the timestep token and every patch
  (target and references) attend to the whole sequence. Registered as the `hidream_o1` attention
  implementation and used by the text decoder only.

Parameter names match the published checkpoint (`model.x_embedder.proj1.weight`, ...), so it loads
with `from_pretrained` as the Qwen3VLForConditionalGeneration it declares itself to be; `load_checked`
refuses a checkpoint that does not fill the model exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
    Qwen3VLPreTrainedModel,
)

from hidream_service.inference.hidream_o1.geometry import PATCH_SIZE
from hidream_service.inference.weights import WeightsError

ATTENTION = "hidream_o1"
#: Config attribute of the patch side; absent in the published config, which means 32.
PATCH_SIZE_ATTRIBUTE = "pixel_patch_size"
TIMESTEP_FREQUENCIES = 256
MAX_PERIOD = 10_000.0
CHANNELS = 3
#: How many names of each kind a loading error lists before it says "and N more".
NAMES_SHOWN = 10


class CheckpointMismatch(WeightsError):
    """An O1 checkpoint whose tensors are not exactly the model's: some missing, unexpected or misshapen."""


def prefix_causal_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    causal_length: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention over the first `causal_length` tokens, full attention for the rest.

    Every generation token comes after every prompt token, so the mixed mask splits into two
    unmasked SDPA calls (causal over the prompt, full for the generation rows), which keeps the
    fused kernels available. Without `causal_length` this is plain SDPA.
    """
    kwargs.pop("is_causal", None)
    if causal_length is None:
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return output, None
    prompt = slice(None, causal_length)
    prompt_out, _ = sdpa_attention_forward(
        module, query[:, :, prompt], key[:, :, prompt], value[:, :, prompt], None, is_causal=True, **kwargs
    )
    generation_out, _ = sdpa_attention_forward(
        module, query[:, :, causal_length:], key, value, None, is_causal=False, **kwargs
    )
    return torch.cat([prompt_out, generation_out], dim=1), None  # [batch, tokens, heads, head_dim]


AttentionInterface.register(ATTENTION, prefix_causal_attention)


def patch_size_of(config: Any) -> int:
    return int(getattr(config, PATCH_SIZE_ATTRIBUTE, None) or PATCH_SIZE)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] (1 = clean) -> sinusoidal features of 1000 t (cos, then sin) -> MLP."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(TIMESTEP_FREQUENCIES, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = TIMESTEP_FREQUENCIES // 2
        exponents = torch.arange(half, dtype=torch.float32, device=t.device) / half
        frequencies = torch.exp(-math.log(MAX_PERIOD) * exponents)
        angles = (t.float() * 1000.0)[:, None] * frequencies[None]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        embedded: torch.Tensor = self.mlp(features.to(self.mlp[0].weight.dtype))
        return embedded


class PatchEmbedder(nn.Module):
    """A flattened RGB patch (channel-major) -> hidden, through a hidden/4 bottleneck."""

    def __init__(self, patch_size: int, hidden_size: int) -> None:
        super().__init__()
        self.proj1 = nn.Linear(CHANNELS * patch_size * patch_size, hidden_size // 4, bias=False)
        self.proj2 = nn.Linear(hidden_size // 4, hidden_size)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        projected: torch.Tensor = self.proj2(self.proj1(patches))
        return projected


class PixelHead(nn.Module):
    """Decoder output -> a clean RGB patch."""

    def __init__(self, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, CHANNELS * patch_size * patch_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        predicted: torch.Tensor = self.linear(hidden)
        return predicted


@dataclass
class VisionFeatures:
    """The vision encoder's view of the references, computed once per request."""

    embeds: torch.Tensor  # [image tokens, hidden], in prompt order
    deepstack: list[torch.Tensor]  # added to the first decoder layers' output at the image tokens


@dataclass
class DenoiserPrompt:
    """Everything about one prompt that stays fixed across the denoising steps."""

    input_ids: torch.Tensor  # [1, prompt tokens], ending with the timestep token
    position_ids: torch.Tensor  # [3, 1, all tokens]: prompt, then target patches, then reference patches
    vision: VisionFeatures | None = None  # for the prompt's image placeholder tokens

    @property
    def causal_length(self) -> int:
        """Tokens before the timestep token; it and everything after it attend to the whole sequence."""
        return int(self.input_ids.shape[1]) - 1


class HiDreamO1Model(Qwen3VLModel):
    """Qwen3VLModel plus the pixel embedder, timestep embedder and pixel head."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        hidden_size = config.text_config.hidden_size
        self.patch_size = patch_size_of(config)
        self.t_embedder1 = TimestepEmbedder(hidden_size)
        self.x_embedder = PatchEmbedder(self.patch_size, hidden_size)
        self.final_layer2 = PixelHead(hidden_size, self.patch_size)
        self.post_init()

    def encode_references(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> VisionFeatures:
        """Run the vision encoder once over every reference's condition image."""
        encoded = self.get_image_features(pixel_values, image_grid_thw)
        return VisionFeatures(
            embeds=torch.cat(list(encoded.pooler_output), dim=0),
            deepstack=[torch.cat(list(per_image), dim=0) for per_image in encoded.deepstack_features],
        )

    def predict_clean(
        self, prompt: DenoiserPrompt, patches: torch.Tensor, t: torch.Tensor, *, timestep_token_id: int, targets: int
    ) -> torch.Tensor:
        """Predicted clean target patches [batch, targets, 3 * patch**2] for noisy `patches` (target
        patches first, then reference patches) at t in [0, 1] (one per batch row)."""
        batch = patches.shape[0]
        input_ids = prompt.input_ids.expand(batch, -1)
        prompt_length = input_ids.shape[1]
        embeds = self.get_input_embeddings()(input_ids)
        visual_mask = deepstack = None
        if prompt.vision is not None:
            image_tokens = input_ids[0] == self.config.image_token_id
            embeds = embeds.clone()
            embeds[:, image_tokens] = prompt.vision.embeds.to(embeds.dtype)
            padding = torch.zeros(patches.shape[1], dtype=torch.bool, device=embeds.device)
            visual_mask = torch.cat([image_tokens, padding]).expand(batch, -1)
            deepstack = [features.repeat(batch, 1) for features in prompt.vision.deepstack]
        timestep_embeds = self.t_embedder1(t).to(embeds.dtype)
        is_timestep_token = (input_ids == timestep_token_id)[..., None]
        embeds = torch.where(is_timestep_token, timestep_embeds[:, None, :], embeds)
        sequence = torch.cat([embeds, self.x_embedder(patches.to(embeds.dtype))], dim=1)
        decoded = self.language_model(
            inputs_embeds=sequence,
            position_ids=prompt.position_ids.expand(-1, batch, -1),
            visual_pos_masks=visual_mask,
            deepstack_visual_embeds=deepstack,
            use_cache=False,
            causal_length=prompt.causal_length,
        ).last_hidden_state
        predicted: torch.Tensor = self.final_layer2(decoded[:, prompt_length : prompt_length + targets])
        return predicted


class HiDreamO1ForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """The checkpoint's top-level class: HiDreamO1Model plus the (unused) language-model head."""

    def __init__(self, config: Any) -> None:
        Qwen3VLPreTrainedModel.__init__(self, config)  # not the parent's: it would build a plain Qwen3VLModel
        self.model = HiDreamO1Model(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.use_o1_attention()

    def use_o1_attention(self) -> None:
        """The text decoder attends with the O1 mask; the vision encoder keeps plain SDPA."""
        self.config.text_config._attn_implementation = ATTENTION
        self.model.language_model.config._attn_implementation = ATTENTION

    @classmethod
    def load_checked(cls, directory: Path, dtype: torch.dtype) -> HiDreamO1ForConditionalGeneration:
        """`from_pretrained`, refusing any missing, unexpected or misshapen checkpoint tensor.

        transformers 5 only warns about those and leaves missing layers at their random
        initialisation (the release pins transformers 4.57); a model like that renders noise."""
        # Misshapen tensors are reported in `info` (and refused below, by name) instead of raised unnamed.
        model, info = cls.from_pretrained(
            directory, dtype=dtype, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
        )
        problem = loading_problem(info)
        if problem is not None:
            raise CheckpointMismatch(f"{directory} does not fit HiDream-O1: {problem}")
        model.use_o1_attention()
        return model  # type: ignore[no-any-return]


def loading_problem(info: dict[str, Any]) -> str | None:
    """What `from_pretrained(..., output_loading_info=True)` found wrong, naming the tensors; None if nothing."""
    kinds = {
        "missing from the checkpoint": sorted(info.get("missing_keys") or ()),
        "in the checkpoint but not in the model": sorted(info.get("unexpected_keys") or ()),
        "of another shape than the model's": sorted(
            f"{name} ({tuple(stored)} stored, {tuple(expected)} expected)"
            for name, stored, expected in info.get("mismatched_keys") or ()
        ),
    }
    parts = [f"{len(names)} tensor(s) {kind}: {_listed(names)}" for kind, names in kinds.items() if names]
    parts += [str(message) for message in info.get("error_msgs") or ()]
    return "; ".join(parts) or None


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown if len(names) <= NAMES_SHOWN else f"{shown} and {len(names) - NAMES_SHOWN} more"
