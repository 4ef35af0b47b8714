"""HiDream-I1 Full's transformer at full size with random weights (no download): seconds per
50-step 1024x1024 image with CFG, MFU against its FLOP count, and peak GPU memory.

    .venv/bin/python bench/gpu.py [--steps 50] [--compile] [--json FILE]    on a CUDA machine
    .venv/bin/python bench/gpu.py --tiny                                     the same code, tiny, on the CPU

Only the transformer is timed: it is about all of a step's work (the text encoders run once per
image, the VAE once at the end). --compile compiles each repeated block (regional compilation);
the MoE router's data-dependent bincount breaks the graph inside every block, so expect little.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

#: The published transformer's config (diffusers conversion of HiDream-ai/HiDream-I1-Full).
FULL_CONFIG: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 16,
    "num_single_layers": 32,
    "attention_head_dim": 128,
    "num_attention_heads": 20,
    "caption_channels": [4096, 4096],
    "text_emb_dim": 2048,
    "num_routed_experts": 4,
    "num_activated_experts": 2,
    "axes_dims_rope": (64, 32, 32),
    "max_resolution": (128, 128),
    "llama_layers": [*range(32), *[31] * 16],
}
#: The tiny weights' transformer (hidream_service/inference/tiny.py), for a run on the CPU.
TINY_CONFIG: dict[str, Any] = {
    **FULL_CONFIG,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "caption_channels": [32, 16],
    "text_emb_dim": 64,
    "axes_dims_rope": (4, 2, 2),
    "max_resolution": (32, 32),
    "llama_layers": [0, 1],
}
TEXT_TOKENS = 128  # T5 and Llama prompts are padded to 128 tokens each
#: Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def active_linear_params(model: Any, config: dict[str, Any]) -> float:
    """Weights of every Linear a token goes through: the routed experts count at activated/routed."""
    import torch

    share = config["num_activated_experts"] / config["num_routed_experts"]
    total = 0.0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            routed = ".experts." in name and "shared" not in name
            total += module.weight.numel() * (share if routed else 1.0)
    return total


def flops_per_forward(model: Any, config: dict[str, Any], latent_side: int, batch: int) -> float:
    """Matmuls (2 per multiply-add, every token through every active Linear: an upper bound, text
    tokens skip the experts) plus attention (QK^T and AV) in every block."""
    image_tokens = (latent_side // config["patch_size"]) ** 2
    tokens = image_tokens + 2 * TEXT_TOKENS
    inner = config["attention_head_dim"] * config["num_attention_heads"]
    blocks = config["num_layers"] + config["num_single_layers"]
    matmuls = 2 * active_linear_params(model, config) * tokens
    attention = 4 * tokens**2 * inner * blocks
    return batch * (matmuls + attention)


def inputs(config: dict[str, Any], latent_side: int, batch: int, device: str, dtype: Any) -> dict[str, Any]:
    import torch

    generator = torch.Generator(device=device).manual_seed(0)

    def noise(*shape: int) -> Any:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    t5, llama = config["caption_channels"]
    return {
        "hidden_states": noise(batch, config["in_channels"], latent_side, latent_side),
        "timesteps": torch.full((batch,), 500.0, device=device, dtype=dtype),
        "encoder_hidden_states_t5": noise(batch, TEXT_TOKENS, t5),
        "encoder_hidden_states_llama3": noise(len(config["llama_layers"]), batch, TEXT_TOKENS, llama),
        "pooled_embeds": noise(batch, config["text_emb_dim"]),
        "return_dict": False,
    }


def measure(tiny: bool, steps: int, compile_blocks: bool) -> dict[str, Any]:
    import torch
    from diffusers import HiDreamImageTransformer2DModel

    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    config = TINY_CONFIG if tiny else FULL_CONFIG
    latent_side = 8 if tiny else 128  # 64 px tiny; 1024 px real (VAE scale 8)
    batch = 2  # CFG: the negative and the positive prompt in one call
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 on the GPU directly: 32 GiB, not 64 first
    try:
        with torch.device(device):
            model = HiDreamImageTransformer2DModel(**config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    if compile_blocks:
        for block in [*model.double_stream_blocks, *model.single_stream_blocks]:
            block.compile()
    args = inputs(config, latent_side, batch, device, dtype)

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(2):  # warm-up (and compilation)
            model(**args)
        synchronize()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            model(**args)
        synchronize()
        seconds_per_step = (time.perf_counter() - started) / steps
    flops = flops_per_forward(model, config, latent_side, batch)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "config": "tiny" if tiny else "HiDream-I1 Full transformer, random weights, bf16",
        "compiled_blocks": compile_blocks,
        "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "seconds_per_step": round(seconds_per_step, 4),
        "seconds_per_50_step_image": round(50 * seconds_per_step, 2),
        "tflop_per_step": round(flops / 1e12, 3),
        "achieved_tflop_s": round(flops / seconds_per_step / 1e12, 1),
    }
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((value for key, value in PEAK_BF16.items() if key in name), None)
        result["mfu"] = None if peak is None else round(flops / seconds_per_step / peak, 3)
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed forward passes (after two warm-ups)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    parser.add_argument("--tiny", action="store_true", help="the tiny config on the CPU: proves the code runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print(
                "no CUDA device: the GPU benchmark runs only on a GPU machine (--tiny runs it small)", file=sys.stderr
            )
            return 2
    result = measure(args.tiny, args.steps, args.compile)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
