"""HiDream-O1's network and sampling pieces on the tiny checkpoint, against plain computations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hidream_service.inference.hidream_o1.model import (
    DenoiserPrompt,
    HiDreamO1ForConditionalGeneration,
    VisionFeatures,
)
from hidream_service.inference.hidream_o1.pixels import patchify, unpatchify
from hidream_service.inference.hidream_o1.sampling import UniPCSampler
from hidream_service.inference.hidream_o1.sequence import TARGET_ORIGIN, rotary_positions

Tensor = torch.Tensor


@pytest.fixture(scope="module")
def tiny_o1(tiny_weights: Path) -> HiDreamO1ForConditionalGeneration:
    model = HiDreamO1ForConditionalGeneration.from_pretrained(tiny_weights / "HiDream-O1-Image")
    model.use_o1_attention()
    return model.eval()


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """Rotary embedding as Qwen applies it: the first and second halves of each head pair up."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def reference_forward(
    model: HiDreamO1ForConditionalGeneration,
    input_ids: Tensor,
    positions: Tensor,
    patches: Tensor,
    t: float,
    vision: VisionFeatures,
    targets: int,
) -> Tensor:
    """O1's forward pass for one image written out from the weights, in float64: no transformers code."""
    config = model.config.text_config
    weights = {name: value.double() for name, value in model.state_dict().items()}
    eps = config.rms_norm_eps
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    ids = input_ids[0]
    prompt_length = len(ids)

    # Prompt embeddings, with the vision features at the image tokens and the timestep at the last token.
    x = weights["model.language_model.embed_tokens.weight"][ids].clone()
    image_tokens = ids == model.config.image_token_id
    x[image_tokens] = vision.embeds.double()
    frequencies = torch.exp(-math.log(10_000) * torch.arange(128, dtype=torch.float64) / 128)
    angles = t * 1000 * frequencies
    features = torch.cat([torch.cos(angles), torch.sin(angles)])
    hidden = torch.nn.functional.silu(
        weights["model.t_embedder1.mlp.0.weight"] @ features + weights["model.t_embedder1.mlp.0.bias"]
    )
    x[-1] = weights["model.t_embedder1.mlp.2.weight"] @ hidden + weights["model.t_embedder1.mlp.2.bias"]
    # Patches through the bottleneck.
    bottleneck = patches[0].double() @ weights["model.x_embedder.proj1.weight"].T
    x = torch.cat([x, bottleneck @ weights["model.x_embedder.proj2.weight"].T + weights["model.x_embedder.proj2.bias"]])
    tokens = len(x)

    # Rotary angles: frequency j follows the row axis when j % 3 == 1, the column axis when
    # j % 3 == 2 (within each axis's section), else the temporal axis (interleaved multimodal RoPE).
    inverse = 1.0 / (
        config.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    )
    section = config.rope_parameters["mrope_section"]
    axis = [
        1 if j % 3 == 1 and j < 3 * section[1] else 2 if j % 3 == 2 and j < 3 * section[2] else 0
        for j in range(len(inverse))
    ]
    angles = torch.stack([positions[axis[j]].double() * inverse[j] for j in range(len(inverse))], dim=-1)

    # The prompt (before the timestep token) is causal; the timestep token and all patches see everything.
    allowed = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    allowed[prompt_length - 1 :] = True

    for layer in range(config.num_hidden_layers):
        p = f"model.language_model.layers.{layer}."
        h = rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = (h @ weights[p + "self_attn.q_proj.weight"].T).view(tokens, heads, head_dim)
        k = (h @ weights[p + "self_attn.k_proj.weight"].T).view(tokens, kv_heads, head_dim)
        v = (h @ weights[p + "self_attn.v_proj.weight"].T).view(tokens, kv_heads, head_dim)
        q = rotate(rms_norm(q, weights[p + "self_attn.q_norm.weight"], eps), angles[:, None])
        k = rotate(rms_norm(k, weights[p + "self_attn.k_norm.weight"], eps), angles[:, None])
        outputs = []
        for head in range(heads):
            group = head // (heads // kv_heads)
            scores = (q[:, head] @ k[:, group].T) / math.sqrt(head_dim)
            scores = scores.masked_fill(~allowed, float("-inf"))
            outputs.append(torch.softmax(scores, dim=-1) @ v[:, group])
        x = x + torch.cat(outputs, dim=-1) @ weights[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gate = torch.nn.functional.silu(h @ weights[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ weights[p + "mlp.up_proj.weight"].T)) @ weights[p + "mlp.down_proj.weight"].T
        if layer < len(vision.deepstack):  # DeepStack: vision features added again after early layers
            x[:prompt_length][image_tokens] += vision.deepstack[layer].double()
    x = rms_norm(x, weights["model.language_model.norm.weight"], eps)
    head_in = x[prompt_length : prompt_length + targets]
    return head_in @ weights["model.final_layer2.linear.weight"].T + weights["model.final_layer2.linear.bias"]


def test_the_forward_pass_matches_a_plain_computation_from_the_weights(
    tiny_o1: HiDreamO1ForConditionalGeneration,
) -> None:
    config = tiny_o1.config
    generator = torch.Generator().manual_seed(0)
    image = config.image_token_id
    hidden = config.text_config.hidden_size
    # Two references seen by the vision encoder as 1x2 and 2x1 grids, then the caption, then <|tms_token|>.
    input_ids = [1, 2, 3, image, image, 4, image, image, 5, 6, 7]
    target, references = (3, 2), [(2, 2)]
    positions = rotary_positions(input_ids, image, [(1, 2), (2, 1)], target, references)
    vision = VisionFeatures(
        embeds=torch.randn(4, hidden, generator=generator),
        deepstack=[torch.randn(4, hidden, generator=generator)],
    )
    prompt = DenoiserPrompt(torch.tensor([input_ids]), positions[:, None], vision)
    patches = torch.randn(1, 6 + 4, 3 * 2 * 2, generator=generator) * 3
    timestep_token = input_ids[-1]

    with torch.inference_mode():
        ours = tiny_o1.model.predict_clean(
            prompt, patches, torch.tensor([0.37]), timestep_token_id=timestep_token, targets=6
        )
    reference = reference_forward(tiny_o1, prompt.input_ids, positions, patches, 0.37, vision, targets=6)

    assert ours.shape == (1, 6, 12)
    torch.testing.assert_close(ours[0].double(), reference, rtol=1e-4, atol=1e-5)


def test_positions_anchor_the_target_grid_at_4096_and_resume_text_past_vision_grids() -> None:
    image = 9
    positions = rotary_positions([1, image, image, image, image, image, image, 2], image, [(2, 3)], (2, 2), [(1, 3)])

    assert positions[:, 0].tolist() == [0, 0, 0]
    assert positions[:, 1:7].T.tolist() == [[1, 1, 1], [1, 1, 2], [1, 1, 3], [1, 2, 1], [1, 2, 2], [1, 2, 3]]
    assert positions[:, 7].tolist() == [4, 4, 4]  # resumes at 1 + max(2, 3)
    o = TARGET_ORIGIN
    assert positions[:, 8:12].T.tolist() == [[o, o, o], [o, o, o + 1], [o, o + 1, o], [o, o + 1, o + 1]]
    r = o + 2
    assert positions[:, 12:].T.tolist() == [[r, r, r], [r, r, r + 1], [r, r, r + 2]]


def test_patches_are_channel_major_rows_in_raster_order() -> None:
    pixels = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)

    patches = patchify(pixels, 2)

    assert patches.shape == (2, 6, 12)
    second = pixels[1, :, 0:2, 2:4]  # image 1, patch row 0, column 1
    assert torch.equal(patches[1, 1], second.reshape(-1))
    assert torch.equal(unpatchify(patches, 2, 4, 6), pixels)


def test_the_full_schedule_is_the_release_s() -> None:
    """The release's UniPC schedule for 50 and 4 steps at shift 3 (timesteps as it computes them)."""
    fifty = UniPCSampler(50, 3.0, torch.device("cpu")).timesteps
    four = UniPCSampler(4, 3.0, torch.device("cpu")).timesteps

    assert fifty[:8] == [999, 993, 986, 979, 971, 964, 956, 948]
    assert fifty[-6:] == [290, 249, 206, 160, 111, 57]
    assert len(fifty) == 50
    assert four == [999, 899, 749, 499]
