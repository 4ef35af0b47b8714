"""Our E1 and image-to-image loops against the upstream algorithms they follow, on tiny weights:
HiDream-ai/HiDream-E1 at f6f0631 (inference.py, inference_e1_1.py, pipeline_hidream_image_editing.py)
and diffusers' image-to-image step rule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import HiDreamImageTransformer2DModel, StableDiffusion3Img2ImgPipeline
from diffusers.models.transformers import transformer_hidream_image
from PIL import Image
from safetensors.torch import load_file

from hidream_service.inference.denoising import PromptEmbeds, predict, predict_unpadded, sequence_room
from hidream_service.inference.hidream_e1 import lora_config
from hidream_service.inference.image_to_image import remaining_schedule, steps_to_run
from hidream_service.inference.pipelines import PipelineCache, build_scheduler
from hidream_service.inference.recipes import E1_FULL, FULL
from hidream_service.inference.weights import WeightsLayout
from hidream_service.models.registry import DEFAULT_REGISTRY
from tests.integration.test_runners import RecordingContext, run_endpoint


@pytest.fixture(scope="module")
def pipelines(tiny_weights: Path) -> PipelineCache:
    return DEFAULT_REGISTRY.pipelines(WeightsLayout(tiny_weights), "cpu", max_loaded=5)


def picture(width: int, height: int) -> Image.Image:
    return Image.effect_noise((width, height), 60).convert("RGB")


def random_embeds(config: Any, generator: torch.Generator) -> PromptEmbeds:
    return PromptEmbeds(
        t5=torch.randn(1, 8, config.caption_channels[0], generator=generator),
        llama=torch.randn(len(config.llama_layers), 1, 8, config.caption_channels[1], generator=generator),
        pooled=torch.randn(1, config.text_emb_dim, generator=generator),
    )


# -- E1-Full's refine stage -------------------------------------------------------------------------


def transformer_output(transformer: Any, seed: int = 0) -> torch.Tensor:
    """The transformer's output on fixed random inputs: a fingerprint of the weights it runs with."""
    generator = torch.Generator().manual_seed(seed)
    config = transformer.config
    embeds = random_embeds(config, generator)
    with torch.inference_mode():
        output: torch.Tensor = transformer(
            hidden_states=torch.randn(1, config.in_channels, 8, 16, generator=generator),
            timesteps=torch.tensor([500.0]),
            encoder_hidden_states_t5=embeds.t5,
            encoder_hidden_states_llama3=embeds.llama,
            pooled_embeds=embeds.pooled,
            return_dict=False,
        )[0]
    return output


def release_e1_full_transformer(weights: Path) -> tuple[Any, dict[str, Any]]:
    """The E1-Full transformer as the release's inference.py loads it, and the values it puts back for
    the refine stage: taken from `state_dict()` before the E1 checkpoint is loaded, as views."""
    transformer = HiDreamImageTransformer2DModel.from_pretrained(weights / FULL.directory, subfolder="transformer")
    transformer.add_adapter(lora_config())
    checkpoint = load_file(str(weights / E1_FULL.directory / E1_FULL.weights))
    before = transformer.state_dict()
    refine_values = {name: before[name] for name in checkpoint if "lora" not in name}
    assert not transformer.load_state_dict(checkpoint, strict=False).unexpected_keys
    return transformer.eval(), refine_values


def test_e1_full_refines_as_the_release_does_lora_off_and_e1_s_full_tensors_kept(
    pipelines: PipelineCache, tiny_weights: Path
) -> None:
    loaded = pipelines.get("e1-full")
    ours = loaded.pipeline.transformer
    release, refine_values = release_e1_full_transformer(tiny_weights)
    plain_i1_full = HiDreamImageTransformer2DModel.from_pretrained(
        tiny_weights / FULL.directory, subfolder="transformer"
    ).eval()

    editing = transformer_output(ours)
    loaded.refine.refining()
    refining = transformer_output(ours)
    loaded.refine.editing()
    editing_again = transformer_output(ours)

    release_editing = transformer_output(release)
    release.disable_adapters()  # the release's switch to its refine stage
    release.load_state_dict(refine_values, strict=False)
    release_refining = transformer_output(release)

    assert refine_values  # the tiny checkpoint replaces full tensors, as the real one does
    assert torch.equal(editing, release_editing) and torch.equal(editing, editing_again)
    assert torch.equal(refining, release_refining)
    # Not the plain I1-Full transformer: E1's replaced tensors stay in the refine stage.
    assert not torch.allclose(refining, transformer_output(plain_i1_full))


# -- E1 prompts: the release's format reaches the encoders, and the refine stage gets its target -------


@pytest.mark.parametrize(
    ("endpoint", "description", "encoded"),
    [
        (
            "fal-ai/hidream-e1-full",
            None,
            ["Editing Instruction: make it snow. Target Image Description:", ""],
        ),
        (
            "fal-ai/hidream-e1-full",
            "a snowy street",
            ["Editing Instruction: make it snow. Target Image Description: a snowy street", "a snowy street"],
        ),
        ("fal-ai/hidream-e1-1", None, ["make it snow."]),  # the bare instruction guides both stages
    ],
)
def test_e1_encodes_the_release_s_prompts(
    pipelines: PipelineCache,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    description: str | None,
    encoded: list[str],
) -> None:
    model = DEFAULT_REGISTRY.endpoints[endpoint].model
    assert model is not None
    pipe = pipelines.get(model).pipeline
    prompts: list[str] = []
    encode_prompt = pipe.encode_prompt

    def recording(**kwargs: Any) -> Any:
        prompts.append(kwargs["prompt"])
        return encode_prompt(**kwargs)

    monkeypatch.setattr(pipe, "encode_prompt", recording)
    ctx = RecordingContext(inputs={"mem://in": picture(64, 64)})
    inputs = {"image_url": "mem://in", "edit_instruction": "make it snow.", "num_inference_steps": 2, "seed": 1}
    if description is not None:
        inputs["target_image_description"] = description

    output = run_endpoint(pipelines, endpoint, inputs, ctx)

    assert prompts == encoded
    assert output["prompt"] == encoded[0]


# -- E1 output size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "source", "returned"),
    [
        ("fal-ai/hidream-e1-full", (48, 40), (48, 40)),  # edited at 64x64; returned at the source's size
        ("fal-ai/hidream-e1-full", (120, 80), (78, 52)),  # more pixels than 64x64: 3:2 at 64² instead
        ("fal-ai/hidream-e1-1", (40, 56), (40, 56)),  # edited at 48x64
        ("fal-ai/hidream-e1-1", (120, 80), (68, 45)),  # edited at 64x48 (3072 px): 3:2 at 3072 px
    ],
)
def test_e1_returns_the_source_s_size_unless_that_enlarges_the_edit(
    pipelines: PipelineCache, endpoint: str, source: tuple[int, int], returned: tuple[int, int]
) -> None:
    ctx = RecordingContext(inputs={"mem://in": picture(*source)})

    output = run_endpoint(
        pipelines, endpoint, {"image_url": "mem://in", "edit_instruction": "x", "num_inference_steps": 2}, ctx
    )

    (image,) = output["images"]
    assert (image["width"], image["height"]) == returned == ctx.saved[0].size  # the real size, reported


# -- no padded tokens -------------------------------------------------------------------------------


class MaskedSdpa:
    """torch.nn.functional as diffusers' HiDream attention sees it, but with image positions
    [real, padded) really masked out of attention: what zeroing their keys was meant to do."""

    def __init__(self, real: int, padded: int) -> None:
        self.real, self.padded = real, padded

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.nn.functional, name)

    def scaled_dot_product_attention(self, query: Any, key: Any, value: Any, **kwargs: Any) -> Any:
        keep = torch.ones(1, key.shape[-2], dtype=torch.bool)
        keep[:, self.real : self.padded] = False
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=keep, **kwargs)


def test_an_unpadded_call_equals_truly_masked_padding_and_diffusers_padding_leaks(
    pipelines: PipelineCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = pipelines.get("e1-1").pipeline
    config = pipe.transformer.config
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(1, config.in_channels, 8, 4, generator=generator)  # non-square: 4x2 = 8 patches
    embeds = random_embeds(config, generator)
    timestep = torch.tensor(500.0)
    real, padded = 8, 16  # padded to twice its tokens, as the release's E1.1 refine stage is

    with torch.inference_mode():
        unpadded = predict_unpadded(pipe, latents, timestep, embeds)
        with sequence_room(pipe.transformer, padded):
            leaky = predict(pipe, latents, timestep, embeds)
            monkeypatch.setattr(transformer_hidream_image, "F", MaskedSdpa(real, padded))
            masked = predict(pipe, latents, timestep, embeds)

    assert torch.allclose(unpadded, masked, atol=1e-5), (unpadded - masked).abs().max()
    assert not torch.allclose(leaky, masked, atol=1e-3)  # zeroed keys still take softmax weight


@pytest.mark.parametrize(
    ("endpoint", "source"), [("fal-ai/hidream-e1-1", (120, 80)), ("fal-ai/hidream-e1-full", (96, 64))]
)
def test_no_e1_transformer_call_is_padded(pipelines: PipelineCache, endpoint: str, source: tuple[int, int]) -> None:
    model = DEFAULT_REGISTRY.endpoints[endpoint].model
    assert model is not None
    transformer = pipelines.get(model).pipeline.transformer
    calls: list[tuple[int, int, int]] = []  # (latent height, latent width, max_seq at the call)

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        height, width = kwargs["hidden_states"].shape[-2:]
        calls.append((height, width, module.max_seq))

    hook = transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        ctx = RecordingContext(inputs={"mem://in": picture(*source)})
        inputs = {"image_url": "mem://in", "edit_instruction": "x", "num_inference_steps": 4, "refine_strength": 0.5}
        run_endpoint(pipelines, endpoint, inputs, ctx)
    finally:
        hook.remove()

    patch = transformer.config.patch_size
    assert len(calls) == 4 and len({width for _, width, _ in calls}) == 2  # both stages ran
    for height, width, max_seq in calls:
        assert height == width or (height // patch) * (width // patch) == max_seq, calls


# -- image-to-image steps ---------------------------------------------------------------------------


def test_image_to_image_runs_the_steps_diffusers_image_to_image_runs() -> None:
    for steps in (1, 2, 3, 7, 10, 28, 50):
        for strength in (0.01, 0.1, 0.25, 0.3, 0.33, 0.5, 0.6, 0.75, 0.9, 0.99, 1.0):
            ours, theirs = build_scheduler(FULL, None), build_scheduler(FULL, None)
            ours.set_timesteps(steps)
            theirs.set_timesteps(steps)

            timesteps, start = remaining_schedule(ours, steps, strength)
            expected, count = StableDiffusion3Img2ImgPipeline.get_timesteps(
                SimpleNamespace(scheduler=theirs), steps, strength, "cpu"
            )

            assert torch.equal(timesteps, expected), (steps, strength)
            assert steps_to_run(steps, strength) == count == len(timesteps), (steps, strength)
            assert ours.begin_index == theirs.begin_index == start


def test_fifty_steps_at_strength_three_quarters_run_thirty_eight(pipelines: PipelineCache) -> None:
    ctx = RecordingContext(inputs={"mem://in": picture(64, 64)})
    inputs = {"prompt": "x", "image_url": "mem://in", "strength": 0.75, "num_inference_steps": 50, "seed": 1}

    run_endpoint(pipelines, "fal-ai/hidream-i1-full/image-to-image", inputs, ctx)

    assert ctx.steps == [(step, 38) for step in range(1, 39)]
