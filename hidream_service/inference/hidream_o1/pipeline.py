"""HiDream-O1 text-to-image, editing and personalization: one sampling loop over the model.

Our implementation of the official release's `generate_image` (HiDream-ai/HiDream-O1-Image,
models/pipeline.py) on transformers 5.x:

1. Sizes: the request snaps to a preset (or, with keep_original_aspect and one reference, takes the
   reference's size); references shrink as there are more (geometry.py).
2. Prompts: the caption in the chat template (one vision placeholder per reference), then
   `<|boi_token|><|tms_token|>`; with guidance above 1 a second prompt, a single space, with the
   same references, is the unconditional branch (sequence.py).
3. Noise: image i starts from noise_scale * N(0, 1) drawn on the CPU from a generator seeded
   `seed + i + 1` (the release seeds `seed + 1` for its one image), in patches.
4. Each step: the model predicts the clean target patches from [noisy target, clean reference]
   patches at t = 1 - timestep / 1000; the flow (z - x) / sigma is guided (uncond + g (cond -
   uncond)) and stepped by the recipe's sampler (sampling.py). z stays in the model's dtype between
   steps, as in the release.
5. The last z, in [-1, 1], is the image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hidream_service.inference.hidream_o1.geometry import (
    CONDITION_IMAGE_SIZE,
    Geometry,
    ReferencePlan,
    plan_references,
)
from hidream_service.inference.hidream_o1.model import (
    DenoiserPrompt,
    HiDreamO1ForConditionalGeneration,
    patch_size_of,
)
from hidream_service.inference.hidream_o1.pixels import image_to_tensor, patchify, tensor_to_images, unpatchify
from hidream_service.inference.hidream_o1.recipes import Recipe, sampling_for
from hidream_service.inference.hidream_o1.sampling import clean_of, flow_of, sampler_for
from hidream_service.inference.hidream_o1.sequence import UNCONDITIONAL_PROMPT, PromptBuilder
from hidream_service.inference.previews import shrunk

#: Called after each step with (step index, total steps, the forming image: a thunk answering the
#: current prediction as RGB in [-1, 1]); returning True stops the loop (a cancel).
StepCallback = Callable[[int, int, Callable[[], Any]], bool]


@dataclass
class HiDreamO1Pipeline:
    model: HiDreamO1ForConditionalGeneration
    prompts: PromptBuilder
    geometry: Geometry
    recipe: Recipe

    @classmethod
    def load(
        cls,
        directory: Path,
        recipe: Recipe,
        device: str,
        *,
        divisor: int = 1,
        condition_image_size: int = CONDITION_IMAGE_SIZE,
    ) -> HiDreamO1Pipeline:
        """The published checkpoint folder (or a tiny one), in bfloat16 on CUDA and float32 on CPU.
        `divisor` and `condition_image_size` shrink the sizes it works at (tiny weights)."""
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = HiDreamO1ForConditionalGeneration.load_checked(directory, dtype).to(device).eval()
        prompts = PromptBuilder.load(directory, int(model.config.image_token_id))
        geometry = Geometry(patch_size_of(model.config), divisor, condition_image_size)
        return cls(model, prompts, geometry, recipe)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def plan(self, width: int, height: int, references: list[Any], *, keep_original_aspect: bool) -> ReferencePlan:
        return plan_references(self.geometry, references, width, height, keep_original_aspect=keep_original_aspect)

    def __call__(
        self,
        prompt: str,
        plan: ReferencePlan,
        *,
        steps: int,
        guidance_scale: float,
        seed: int,
        count: int,
        on_step: StepCallback,
    ) -> list[Any]:
        """`count` images for the prompt; image i depends only on seed + i. [] when stopped early."""
        patch = self.geometry.patch_size
        target = (plan.height // patch, plan.width // patch)
        sampling = sampling_for(self.recipe, steps, len(plan.references))
        seeds = [(seed + index + 1) % 2**64 for index in range(count)]
        step_generators = [torch.Generator(device=self.device).manual_seed(value) for value in seeds]
        sampler = sampler_for(sampling, steps, self.recipe.shift, self.device, step_generators)
        captions = [prompt, UNCONDITIONAL_PROMPT] if guidance_scale > 1.0 else [prompt]
        # The release runs the model under bfloat16 autocast on CUDA; on the CPU we run float32 as loaded.
        autocast = torch.autocast("cuda", dtype=self.dtype) if self.device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            denoiser_prompts = self._prompts(captions, plan, target)
            references = self._reference_patches(plan.references, count)
            z = self._initial_noise(seeds, plan, sampling.noise_scale)
            for index, timestep in enumerate(sampler.timesteps):
                flows = [self._flow(denoiser_prompt, z, references, timestep) for denoiser_prompt in denoiser_prompts]
                flow = flows[0] if len(flows) == 1 else flows[1] + guidance_scale * (flows[0] - flows[1])
                previous, z = z, sampler.step(index, flow, z).to(self.dtype)
                if on_step(index, len(sampler.timesteps), self._forming(previous, flow, timestep, plan)):
                    return []
            return tensor_to_images(unpatchify(z, patch, plan.height, plan.width))

    def _forming(self, z: torch.Tensor, flow: torch.Tensor, timestep: Any, plan: ReferencePlan) -> Callable[[], Any]:
        """The forming-image thunk: the clean image the model predicts at this step, shrunk on the
        device so that only a preview's worth of pixels leaves it."""

        def forming() -> Any:
            clean = clean_of(flow, z, int(timestep))
            pixels = unpatchify(clean, self.geometry.patch_size, plan.height, plan.width)
            return shrunk(pixels.float().clamp(-1.0, 1.0))

        return forming

    def _prompts(self, captions: list[str], plan: ReferencePlan, target: tuple[int, int]) -> list[DenoiserPrompt]:
        if not plan.references:
            return [self._on_device(self.prompts.text_only(caption, target)) for caption in captions]
        patch = self.geometry.patch_size
        grids = [(image.height // patch, image.width // patch) for image in plan.references]
        pixel_values, image_grid_thw = self.prompts.condition_inputs(plan.conditions)
        vision = self.model.model.encode_references(
            pixel_values.to(self.device, self.dtype), image_grid_thw.to(self.device)
        )
        return [
            self._on_device(self.prompts.with_references(caption, image_grid_thw, vision, target, grids))
            for caption in captions
        ]

    def _on_device(self, prompt: DenoiserPrompt) -> DenoiserPrompt:
        return DenoiserPrompt(prompt.input_ids.to(self.device), prompt.position_ids.to(self.device), prompt.vision)

    def _reference_patches(self, images: list[Any], count: int) -> torch.Tensor | None:
        if not images:
            return None
        patches = [patchify(image_to_tensor(image), self.geometry.patch_size) for image in images]
        return torch.cat(patches, dim=1).to(self.device, self.dtype).expand(count, -1, -1)

    def _initial_noise(self, seeds: list[int], plan: ReferencePlan, scale: float) -> torch.Tensor:
        noise = [
            scale * torch.randn((1, 3, plan.height, plan.width), generator=torch.Generator().manual_seed(value))
            for value in seeds
        ]
        return patchify(torch.cat(noise), self.geometry.patch_size).to(self.device, self.dtype)

    def _flow(
        self, prompt: DenoiserPrompt, z: torch.Tensor, references: torch.Tensor | None, timestep: int
    ) -> torch.Tensor:
        patches = z if references is None else torch.cat([z, references], dim=1)
        # t = 1 - timestep / 1000 in float32, as the release computes it (1 is clean).
        t = (1.0 - torch.tensor(timestep, dtype=torch.float32) / 1000.0).expand(z.shape[0]).to(self.device)
        clean = self.model.model.predict_clean(
            prompt, patches, t, timestep_token_id=self.prompts.timestep_token_id, targets=z.shape[1]
        )
        return flow_of(clean, z, timestep)
