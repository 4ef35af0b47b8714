"""The three samplers of the official release, stepping in the flow-matching convention.

The model predicts the clean image x; at noise level sigma the flow is (z - x) / sigma, the
derivative of the noisy sample z along sigma, which is what diffusers' flow schedulers step with.
Every sampler's state is per image, so image i never depends on the others in the batch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from hidream_service.inference.hidream_o1.recipes import Sampling

TRAIN_TIMESTEPS = 1000
#: The smallest sigma a flow is divided by.
MIN_SIGMA = 0.001


class Sampler(Protocol):
    timesteps: list[int]  # of TRAIN_TIMESTEPS, highest noise first

    def step(self, index: int, flow: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The sample after step `index`, in float32."""


def clean_of(flow: torch.Tensor, z: torch.Tensor, timestep: int) -> torch.Tensor:
    """The clean image a flow points at from z: the inverse of flow_of."""
    sigma = max(timestep / TRAIN_TIMESTEPS, MIN_SIGMA)
    return z.float() - sigma * flow.float()


def flow_of(clean: torch.Tensor, z: torch.Tensor, timestep: int) -> torch.Tensor:
    sigma = max(timestep / TRAIN_TIMESTEPS, MIN_SIGMA)
    return (z.float() - clean.float()) / sigma


class UniPCSampler:
    """Full: diffusers' multistep UniPC (bh2, order 2) on the release's flow sigmas.

    The release's scheduler shifts its sigma range once when it is built and the evenly spaced
    sigmas again when the steps are set; diffusers' UniPC takes the once-shifted sigmas and applies
    the second shift itself, so both run the same schedule.
    """

    def __init__(self, steps: int, shift: float, device: torch.device) -> None:
        from diffusers import UniPCMultistepScheduler

        highest = _shifted(1.0 - 1.0 / TRAIN_TIMESTEPS, shift)
        self.scheduler = UniPCMultistepScheduler(
            num_train_timesteps=TRAIN_TIMESTEPS,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
        )
        self.scheduler.set_timesteps(sigmas=np.linspace(highest, 0.0, steps + 1)[:-1], device=device)
        self.scheduler.set_begin_index(0)
        self.timesteps: list[int] = [int(timestep) for timestep in self.scheduler.timesteps]

    def step(self, index: int, flow: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        timestep = self.scheduler.timesteps[index]
        stepped: torch.Tensor = self.scheduler.step(flow, timestep, z.float(), return_dict=False)[0]
        return stepped


class EulerSampler:
    """Dev editing: first-order flow matching over a fixed timestep list (sigma = t / 1000)."""

    def __init__(self, timesteps: tuple[int, ...]) -> None:
        self.timesteps = list(timesteps)
        self.sigmas = [timestep / TRAIN_TIMESTEPS for timestep in timesteps] + [0.0]

    def step(self, index: int, flow: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z.float() + (self.sigmas[index + 1] - self.sigmas[index]) * flow


class FlashSampler:
    """Dev: each step jumps to the predicted clean image and re-noises it to the next sigma with
    fresh noise (scaled, and clipped at `clip_std` of its own std), drawn per image."""

    def __init__(
        self, timesteps: tuple[int, ...], noise_scale: float, clip_std: float, generators: list[torch.Generator]
    ) -> None:
        self.timesteps = list(timesteps)
        self.sigmas = [timestep / TRAIN_TIMESTEPS for timestep in timesteps] + [0.0]
        self.noise_scale = noise_scale
        self.clip_std = clip_std
        self.generators = generators

    def step(self, index: int, flow: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        clean = z.float() - flow * self.sigmas[index]
        following = self.sigmas[index + 1]
        noise = torch.stack([self._noise(generator, z.shape[1:], z.device) for generator in self.generators])
        return following * noise * self.noise_scale + (1.0 - following) * clean

    def _noise(self, generator: torch.Generator, shape: torch.Size, device: torch.device) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        if self.clip_std > 0:
            limit = self.clip_std * noise.std().item()
            noise = noise.clamp(-limit, limit)
        return noise


def sampler_for(
    sampling: Sampling, steps: int, shift: float, device: torch.device, step_generators: list[torch.Generator]
) -> Sampler:
    if sampling.sampler == "unipc":
        return UniPCSampler(steps, shift, device)
    assert sampling.timesteps is not None
    if sampling.sampler == "euler":
        return EulerSampler(sampling.timesteps)
    return FlashSampler(sampling.timesteps, sampling.noise_scale, sampling.noise_clip_std, step_generators)


def _shifted(sigma: float, shift: float) -> float:
    return shift * sigma / (1 + (shift - 1) * sigma)
