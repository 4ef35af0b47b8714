"""HiDream-E1 instruction editing (E1-Full and E1.1) on diffusers' HiDream components.

diffusers has no E1 pipeline; this module is our implementation of the official release's
algorithm (HiDream-ai/HiDream-E1, pipeline_hidream_image_editing.py):

- The source image is VAE-encoded (distribution mode) and joined to the noisy latents along the
  width axis; the transformer sees a 1:2 latent and only the left half of its output is kept.
- Three-way guidance with the image batch [zeros, image, image] and the text batch
  [positive, negative, positive]: the text direction is scaled by `guidance_scale` and clipped to
  the norm of the full prediction, then the image direction is scaled by `image_guidance_scale`.
- The refine stage: for the last `refine_strength` of the steps the image condition is dropped and
  the target description alone guides a plain two-way CFG, as image-to-image refinement.
- Every transformer call sees exactly its own tokens, never padding (see `predict_unpadded`).

Weights, as published (layout in docs/weights.md):
- E1-Full is a LoRA (rank 16) plus some full tensors over the I1-Full transformer, in one file
  `HiDream-E1-Full/HiDream-E1-Full.safetensors`. Its refine stage turns the LoRA off and keeps E1's
  full tensors, as the official script ends up doing (the I1-Full values it means to restore are
  `state_dict()` views, which the E1 load overwrites in place); the published results came from that.
- E1.1 is a full transformer (`HiDream-E1-1/transformer/`, sharded safetensors) in the I1-Full
  architecture. Its refine stage keeps the E1.1 weights, which is what the official script does.
Everything else (VAE, text encoders, scheduler) comes from HiDream-I1-Full.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hidream_service.inference.denoising import (
    PromptEmbeds,
    StepCallback,
    decode,
    encode,
    encode_image,
    initial_noise,
    predict_unpadded,
    step_noise_from,
)
from hidream_service.inference.previews import latent_previews

SHARD_INDEX = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_SHARD = "diffusion_pytorch_model.safetensors"

#: The adapter the E1-Full checkpoint was trained with (official inference.py).
LORA_RANK = 16
LORA_TARGETS = (
    "to_k",
    "to_q",
    "to_v",
    "to_out",
    "to_k_t",
    "to_q_t",
    "to_v_t",
    "to_out_t",
    "w1",
    "w2",
    "w3",
    "final_layer.linear",
)
#: Its adapter's name in the transformer (PEFT's default name, which its checkpoint's keys carry).
E1_ADAPTER = "default"
TARGET_MARKER = "Target Image Description:"
CLIP_EPSILON = 1e-8


class EditWeightsError(Exception):
    """The E1 checkpoint does not fit the I1-Full transformer it is loaded over."""


def edit_prompt(instruction: str, target_description: str | None, *, always_formatted: bool) -> str:
    """The prompt E1 was trained on, `Editing Instruction: {instruction}. Target Image Description:
    {description}` (the instruction without its end dots, as the release's refinement script writes
    it); the description also drives the refine stage.

    Without a description, an `always_formatted` model (E1-Full) gets the format with the description
    left empty: fal's "leave blank to let the model use its own imagination" (docs/weights.md says
    why not the instruction). Other models (E1.1) take the bare instruction. An instruction already
    in the format is kept as it is.
    """
    instruction = instruction.strip()
    description = (target_description or "").strip()
    if not description and (not always_formatted or TARGET_MARKER in instruction):
        return instruction
    return f"Editing Instruction: {instruction.strip('.')}. {TARGET_MARKER} {description}".rstrip()


def target_of(prompt: str) -> str:
    """What the refine stage renders: the text after the marker, else the whole prompt."""
    if TARGET_MARKER in prompt:
        return prompt.split(TARGET_MARKER, 1)[1].strip()
    return prompt


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_RANK,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        init_lora_weights="gaussian",
    )


@dataclass
class RefineSwitch:
    """E1-Full's two stages on one transformer: editing with the LoRA, refining without it. E1's
    full tensors stay in both, as in the official release (module docstring).

    A job's own LoRAs (`requested`, set by inference/loras.py while it runs) stay on in both stages;
    once any was loaded, each switch names the active adapters and their scales outright."""

    transformer: Any
    requested: tuple[tuple[str, float], ...] = ()  # (adapter name, scale) of the running job's LoRAs

    def editing(self) -> None:
        self.transformer.enable_adapters()
        if len(self.transformer.peft_config) > 1:  # request LoRAs were loaded beside E1's
            names, scales = zip((E1_ADAPTER, 1.0), *self.requested, strict=True)
            self.transformer.set_adapters(list(names), list(scales))

    def refining(self) -> None:
        if not self.requested:
            self.transformer.disable_adapters()
            return
        names, scales = zip(*self.requested, strict=True)
        self.transformer.set_adapters(list(names), list(scales))


def apply_e1_full(transformer: Any, checkpoint: Path) -> RefineSwitch:
    """Add the E1 LoRA to an I1-Full transformer and load the checkpoint (LoRA and full tensors) into it."""
    from safetensors.torch import load_file

    transformer.add_adapter(lora_config(), adapter_name=E1_ADAPTER)
    state = load_file(str(checkpoint))
    unexpected = sorted(set(state) - set(transformer.state_dict()))
    if unexpected:
        raise EditWeightsError(
            f"{checkpoint} has {len(unexpected)} tensor(s) the I1-Full transformer does not, e.g. {unexpected[0]}; "
            "is the I1-Full transformer the one E1-Full was trained on?"
        )
    transformer.load_state_dict(state, strict=False)
    return RefineSwitch(transformer)


def load_sharded_state(directory: Path) -> dict[str, Any]:
    """A diffusers transformer folder's tensors: one file, or shards named by the index."""
    from safetensors.torch import load_file

    index = directory / SHARD_INDEX
    if not index.is_file():
        return dict(load_file(str(directory / SINGLE_SHARD)))
    shards: dict[str, list[str]] = defaultdict(list)
    for name, shard in json.loads(index.read_text())["weight_map"].items():
        shards[shard].append(name)
    state: dict[str, Any] = {}
    for shard in shards:
        state.update(load_file(str(directory / shard)))
    return state


def load_e1_1_transformer(i1_full_dir: Path, e1_1_transformer: Path, dtype: Any) -> Any:
    """The E1.1 transformer: I1-Full's config, E1.1's tensors, allocated once."""
    from accelerate import init_empty_weights
    from diffusers import HiDreamImageTransformer2DModel

    config = HiDreamImageTransformer2DModel.load_config(i1_full_dir / "transformer")
    with init_empty_weights():
        transformer = HiDreamImageTransformer2DModel.from_config(config)
    state = {name: value.to(dtype) for name, value in load_sharded_state(e1_1_transformer).items()}
    try:
        transformer.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise EditWeightsError(f"{e1_1_transformer} does not fit the I1-Full transformer: {exc}") from None
    return transformer.eval()


def resize_to_square(image: Any, side: int) -> Any:
    """E1-Full's input: the whole image squeezed to side x side (official inference.py)."""
    from PIL import Image

    return image.resize((side, side), resample=Image.Resampling.BICUBIC)


def edit(
    pipe: Any,
    *,
    prompt: str,
    negative_prompt: str,
    image: Any,
    num_inference_steps: int,
    guidance_scale: float,
    image_guidance_scale: float,
    refine_strength: float,
    generators: list[Any],
    refine: RefineSwitch | None,
    on_step: StepCallback,
) -> list[Any]:
    """Edit `image` (already at its model's size) into len(generators) images."""
    import torch

    count = len(generators)
    guided = guidance_scale > 1.0
    with torch.inference_mode():
        positive, negative = encode(pipe, prompt, negative_prompt, count)
        target_prompt = target_of(prompt)
        if target_prompt == prompt:
            target_positive, target_negative = positive, negative
        else:
            target_positive, target_negative = encode(pipe, target_prompt, negative_prompt, count)
        dtype = positive.pooled.dtype
        source = encode_image(pipe, image, count, dtype)
        if guided:
            edit_embeds = PromptEmbeds.join([positive, negative, positive])
            refine_embeds = PromptEmbeds.join([target_negative, target_positive])
            source = torch.cat([torch.zeros_like(source), source, source], dim=0)
        else:
            edit_embeds, refine_embeds = positive, target_positive
        latents = initial_noise(pipe, source[:count], generators)
        pipe.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        timesteps = pipe.scheduler.timesteps
        refine_from = int(num_inference_steps * (1.0 - refine_strength))
        switched = False
        try:
            with step_noise_from(pipe.scheduler, generators):
                for index, timestep in enumerate(timesteps):
                    refining = index >= refine_from
                    if refining and not switched and refine is not None:
                        refine.refining()
                        switched = True
                    if refining:
                        batch = torch.cat([latents] * 2) if guided else latents
                        velocity = predict_unpadded(pipe, batch, timestep, refine_embeds)
                        if guided:
                            uncond, cond = velocity.chunk(2)
                            velocity = uncond + guidance_scale * (cond - uncond)
                    else:
                        batch = torch.cat([latents] * 3) if guided else latents
                        joined = torch.cat([batch, source], dim=-1)
                        velocity = predict_unpadded(pipe, joined, timestep, edit_embeds)[..., : latents.shape[-1]]
                        if guided:
                            velocity = _edit_guidance(velocity, guidance_scale, image_guidance_scale)
                    latents = pipe.scheduler.step(velocity, timestep, latents, return_dict=False)[0]
                    if on_step(index, len(timesteps), latent_previews(pipe.vae, latents)):
                        return []
        finally:
            if switched and refine is not None:
                refine.editing()  # the next job starts from the editing weights
        return decode(pipe, latents)


def _edit_guidance(velocity: Any, guidance_scale: float, image_guidance_scale: float) -> Any:
    import torch

    uncond, image_cond, full_cond = velocity.chunk(3)
    text_guided = image_cond + guidance_scale * (full_cond - image_cond)
    # Keep the text-guided prediction no longer than the fully conditioned one (per pixel, over channels).
    ratio = torch.norm(full_cond, dim=1, keepdim=True) / (torch.norm(text_guided, dim=1, keepdim=True) + CLIP_EPSILON)
    scale = ratio.clamp(0.0, 1.0)
    return uncond + image_guidance_scale * (text_guided * scale - uncond)
