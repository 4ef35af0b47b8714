"""Pieces shared by our own HiDream denoising loops (E1 editing, I1 image-to-image).

Both loops reuse a loaded diffusers HiDreamImagePipeline for what it does well (prompt encoding,
the VAE, the transformer, the scheduler) and run the loop themselves, because diffusers' pipeline
can neither start from an image nor condition on one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: Called after each step with (step index, total steps, the forming image); returning True stops the
#: loop (a cancel). The forming image is a thunk, called only when a preview is due: it answers the
#: current estimate of each image as RGB in [-1, 1], [batch, 3, h, w], at whatever size is cheap.
StepCallback = Callable[[int, int, Callable[[], Any]], bool]


@dataclass
class PromptEmbeds:
    t5: Any
    llama: Any  # [layers, batch, tokens, dim]: batched along dim 1
    pooled: Any

    @staticmethod
    def join(parts: list[PromptEmbeds]) -> PromptEmbeds:
        import torch

        return PromptEmbeds(
            t5=torch.cat([part.t5 for part in parts], dim=0),
            llama=torch.cat([part.llama for part in parts], dim=1),
            pooled=torch.cat([part.pooled for part in parts], dim=0),
        )


def encode(pipe: Any, prompt: str, negative_prompt: str, count: int) -> tuple[PromptEmbeds, PromptEmbeds]:
    """(positive, negative) embeddings, each repeated for `count` images."""
    t5, negative_t5, llama, negative_llama, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompt,
        negative_prompt=negative_prompt,
        do_classifier_free_guidance=True,
        num_images_per_prompt=count,
        device=pipe._execution_device,
    )
    return PromptEmbeds(t5, llama, pooled), PromptEmbeds(negative_t5, negative_llama, negative_pooled)


def predict(pipe: Any, latents: Any, timestep: Any, embeds: PromptEmbeds) -> Any:
    """The transformer's velocity, sign-flipped as the HiDream pipelines do before the scheduler."""
    output = pipe.transformer(
        hidden_states=latents,
        timesteps=timestep.expand(latents.shape[0]),
        encoder_hidden_states_t5=embeds.t5,
        encoder_hidden_states_llama3=embeds.llama,
        pooled_embeds=embeds.pooled,
        return_dict=False,
    )[0]
    return -output


def encode_image(pipe: Any, image: Any, count: int, dtype: Any) -> Any:
    """VAE latents of a PIL image (the distribution's mode), normalised like the pipeline's, x count."""
    import torch

    pixels = pipe.image_processor.preprocess(image).to(device=pipe._execution_device, dtype=pipe.vae.dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mode()
    latents = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    return torch.cat([latents] * count, dim=0).to(dtype)


def decode(pipe: Any, latents: Any) -> list[Any]:
    latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    pixels = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
    images: list[Any] = pipe.image_processor.postprocess(pixels, output_type="pil")
    return images


def initial_noise(pipe: Any, like: Any, generators: list[Any]) -> Any:
    """Gaussian noise shaped like `like`, image i drawn from generators[i] alone."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(tuple(like.shape), generator=generators, device=like.device, dtype=like.dtype)


def predict_unpadded(pipe: Any, latents: Any, timestep: Any, embeds: PromptEmbeds) -> Any:
    """`predict` with the transformer's sequence exactly as long as the latents' own image tokens.

    diffusers pads a non-square latent's tokens to `transformer.max_seq` and only zeroes the padded
    keys, so each padded token still takes softmax weight (exp(0)) and adds its value to every row's
    attention: the padding is not masked. With the exact length there is none. (The official E1.1
    script sets max_seq to 8192, which pads a non-square source's tokens, and in its refine stage,
    where the latent is half as wide, about half the sequence; E1-Full's 4608 is exact for its
    768x768 joined latent, and its refine latent is square, which diffusers never pads.)
    """
    patch = pipe.transformer.config.patch_size
    with sequence_room(pipe.transformer, (latents.shape[-2] // patch) * (latents.shape[-1] // patch)):
        return predict(pipe, latents, timestep, embeds)


@contextlib.contextmanager
def sequence_room(transformer: Any, patches: int) -> Iterator[None]:
    """Set the length non-square latents are padded to (`max_seq`) to `patches` for one call."""
    original = transformer.max_seq
    transformer.max_seq = max(patches, 1)
    try:
        yield
    finally:
        transformer.max_seq = original


@contextlib.contextmanager
def step_noise_from(scheduler: Any, generators: list[Any]) -> Iterator[None]:
    """Make a stochastic scheduler (FlowMatchLCM, used by Dev and Fast) draw its per-step noise from
    the per-image generators. The pipeline does not pass one, so it would draw from torch's global
    RNG and the same seed would give a different image on every call."""
    if "generator" not in inspect.signature(scheduler.step).parameters:
        yield
        return
    scheduler.step = functools.partial(type(scheduler).step, scheduler, generator=generators)
    try:
        yield
    finally:
        del scheduler.step
