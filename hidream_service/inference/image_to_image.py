"""HiDream-I1 image-to-image: start the I1 denoising loop from the input image's latents.

The image is VAE-encoded, noised to the flow-matching point of the first step kept
(x = (1 - sigma) * image + sigma * noise), and the last `strength` share of the schedule is run
with the usual two-way CFG, with diffusers' image-to-image rule for which steps that is
(`StableDiffusion3Img2ImgPipeline.get_timesteps`, also FluxImg2Img's). strength 1.0 starts from
pure noise, like text-to-image.
"""

from __future__ import annotations

from typing import Any

from hidream_service.inference.denoising import (
    PromptEmbeds,
    StepCallback,
    decode,
    encode,
    encode_image,
    initial_noise,
    predict,
    step_noise_from,
)
from hidream_service.inference.previews import latent_previews


def steps_to_run(num_inference_steps: int, strength: float) -> int:
    """How many of the schedule's last steps run: diffusers skips the whole steps of the part not run
    (floor of steps x (1 - strength)), so a fractional steps x strength rounds up (50 x 0.75 runs 38)."""
    return num_inference_steps - steps_skipped(num_inference_steps, strength)


def steps_skipped(num_inference_steps: int, strength: float) -> int:
    """The leading steps left out, computed as diffusers does (the same float arithmetic)."""
    return int(max(num_inference_steps - min(num_inference_steps * strength, num_inference_steps), 0))


def remaining_schedule(scheduler: Any, num_inference_steps: int, strength: float) -> tuple[Any, int]:
    """(the timesteps to run, the index of the first in the scheduler's schedule), the scheduler set
    up to start there. Its timesteps must be set for `num_inference_steps` already."""
    start = steps_skipped(num_inference_steps, strength) * scheduler.order
    scheduler.set_begin_index(start)
    return scheduler.timesteps[start:], start


def image_to_image(
    pipe: Any,
    *,
    prompt: str,
    negative_prompt: str,
    image: Any,
    strength: float,
    num_inference_steps: int,
    guidance_scale: float,
    generators: list[Any],
    on_step: StepCallback,
) -> list[Any]:
    """Render len(generators) images from `image` (already at the output size)."""
    import torch

    count = len(generators)
    guided = guidance_scale > 1.0
    run = steps_to_run(num_inference_steps, strength)
    if run < 1:
        raise ValueError(f"strength {strength} with {num_inference_steps} steps leaves no step to run")
    with torch.inference_mode():
        positive, negative = encode(pipe, prompt, negative_prompt, count)
        embeds = PromptEmbeds.join([negative, positive]) if guided else positive
        source = encode_image(pipe, image, count, positive.pooled.dtype)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(num_inference_steps, device=source.device)
        timesteps, start = remaining_schedule(scheduler, num_inference_steps, strength)
        sigma = scheduler.sigmas[start].to(source.device, source.dtype)
        latents = (1.0 - sigma) * source + sigma * initial_noise(pipe, source, generators)
        with step_noise_from(scheduler, generators):
            for index, timestep in enumerate(timesteps):
                batch = torch.cat([latents] * 2) if guided else latents
                velocity = predict(pipe, batch, timestep, embeds)
                if guided:
                    uncond, cond = velocity.chunk(2)
                    velocity = uncond + guidance_scale * (cond - uncond)
                latents = scheduler.step(velocity, timestep, latents, return_dict=False)[0]
                if on_step(index, len(timesteps), latent_previews(pipe.vae, latents)):
                    return []
        return decode(pipe, latents)
