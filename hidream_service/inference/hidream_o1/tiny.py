"""A tiny random-weight HiDream-O1, saved as the published checkpoint's folder is.

The same classes as the real model (Qwen3-VL text decoder and vision encoder with deepstack, the O1
pixel embedder, timestep embedder and pixel head) at a few tens of thousands of parameters. Only the
sizes shrink: 2x2-pixel patches and presets divided by 32 (a 64x64 square), set through
`hidream_service.json` and the config's patch size.

The files are those of a Qwen3-VL checkpoint written by transformers 4.57 (the release's pin), in
its formats: config.json with `rope_scaling` and `rope_theta`, safetensors in shards with their
index, a byte-level BPE tokenizer (`tokenizer.json`, `vocab.json`, `merges.txt`) with the Qwen and
O1 special tokens and a `Qwen2Tokenizer` tokenizer_config.json, the image processor's
`preprocessor_config.json` naming the fast (torchvision) processor, the video processor's config,
generation_config.json and the chat template in `chat_template.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hidream_service.inference.hidream_o1.model import PATCH_SIZE_ATTRIBUTE
from hidream_service.inference.tiny import byte_level_bpe, token_entry, write_json
from hidream_service.inference.weights import SERVICE_METADATA

TINY_PATCH_SIZE = 2
TINY_DIVISOR = 32
TINY_CONDITION_IMAGE_SIZE = 64
SHARD_SIZE = "48KB"  # about 8 shards, as the published checkpoints have
WRITTEN_BY = "4.57.1"
#: Qwen3's special tokens in id order (the tool and reasoning tags are added but not special), then O1's.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_PLAIN_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
O1_SPECIAL_TOKENS = ("<|boi_token|>", "<|bor_token|>", "<|eor_token|>", "<|bot_token|>", "<|tms_token|>")
#: Qwen2's pre-tokenizer split (public, in its tokenizer.json).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_MERGES = (("Ġ", "a"), ("i", "n"), ("t", "h"), ("Ġ", "t"), ("e", "r"))
#: Qwen3-VL's chat format for a user turn of text or of images then text.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: The published config declares the stock class; our loader reads the folder all the same.
ARCHITECTURE = "Qwen3VLForConditionalGeneration"


def build_tiny_o1(directory: Path, seed: int) -> None:
    """Write a tiny O1 checkpoint folder (config, shards, tokenizer, processors, template)."""
    import torch
    from transformers import Qwen3VLConfig

    from hidream_service.inference.hidream_o1.model import HiDreamO1ForConditionalGeneration

    directory.mkdir(parents=True, exist_ok=True)
    token_ids = _write_tokenizer(directory)
    _write_processor_configs(directory)
    published = _config(token_ids)
    write_json(directory / "config.json", published)
    torch.manual_seed(seed)
    model = HiDreamO1ForConditionalGeneration(Qwen3VLConfig.from_pretrained(directory)).eval()
    model.save_pretrained(directory, max_shard_size=SHARD_SIZE)
    write_json(directory / "config.json", published)  # save_pretrained rewrote it in 5.x form
    write_json(
        directory / "generation_config.json",
        {
            "bos_token_id": token_ids["<|endoftext|>"],
            "do_sample": True,
            "eos_token_id": [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
            "pad_token_id": token_ids["<|endoftext|>"],
            "temperature": 0.7,
            "top_k": 20,
            "top_p": 0.8,
            "transformers_version": WRITTEN_BY,
        },
    )
    metadata = {"resolution_divisor": TINY_DIVISOR, "condition_image_size": TINY_CONDITION_IMAGE_SIZE}
    (directory / SERVICE_METADATA).write_text(json.dumps(metadata) + "\n")


def _write_tokenizer(directory: Path) -> dict[str, int]:
    """tokenizer.json, vocab.json, merges.txt, tokenizer_config.json and the chat template; returns
    the ids of the added tokens."""
    from tokenizers import AddedToken, normalizers, processors

    specials = [*QWEN_SPECIAL_TOKENS, *O1_SPECIAL_TOKENS]
    tokenizer = byte_level_bpe(QWEN_SPLIT, _MERGES, QWEN_SPECIAL_TOKENS)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in QWEN_PLAIN_ADDED_TOKENS])
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in O1_SPECIAL_TOKENS])
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.save(str(directory / "tokenizer.json"))
    model = json.loads(tokenizer.to_str())["model"]
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in model["merges"]))
    added = [*QWEN_SPECIAL_TOKENS, *QWEN_PLAIN_ADDED_TOKENS, *O1_SPECIAL_TOKENS]
    ids = {token: tokenizer.token_to_id(token) for token in added}
    write_json(
        directory / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {str(ids[token]): token_entry(token, special=token in specials) for token in added},
            "additional_special_tokens": [token for token in specials if token not in ("<|endoftext|>",)],
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "extra_special_tokens": {},
            "model_max_length": 262144,
            "pad_token": "<|endoftext|>",
            "processor_class": "Qwen3VLProcessor",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    write_json(directory / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    return ids


def _write_processor_configs(directory: Path) -> None:
    """Qwen3-VL's image processor (16-pixel patches, 2x2 merge, 2 frames, a small pixel floor here)
    and video processor configs, as transformers 4.57 wrote them."""
    shared = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": 2,
        "patch_size": 16,
        "processor_class": "Qwen3VLProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "temporal_patch_size": 2,
    }
    write_json(
        directory / "preprocessor_config.json",
        {
            **shared,
            "crop_size": None,
            "data_format": "channels_first",
            "default_to_square": True,
            "device": None,
            "do_center_crop": None,
            "image_processor_type": "Qwen2VLImageProcessorFast",
            "input_data_format": None,
            "max_pixels": None,
            "min_pixels": None,
            "return_tensors": None,
            "size": {"longest_edge": 128 * 128, "shortest_edge": 32 * 32},
        },
    )
    write_json(
        directory / "video_preprocessor_config.json",
        {
            **shared,
            "do_sample_frames": True,
            "fps": 2,
            "max_frames": 768,
            "min_frames": 4,
            "size": {"longest_edge": 128 * 128, "shortest_edge": 32 * 32},
            "video_processor_type": "Qwen3VLVideoProcessor",
        },
    )


def _config(token_ids: dict[str, int]) -> dict[str, Any]:
    """Qwen3-VL-8B's config.json as transformers 4.57 wrote it, at tiny sizes, with the tiny patch size."""
    vocab_size = max(token_ids.values()) + 1
    return {
        "architectures": [ARCHITECTURE],
        "image_token_id": token_ids["<|image_pad|>"],
        "model_type": "qwen3_vl",
        PATCH_SIZE_ATTRIBUTE: TINY_PATCH_SIZE,
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": token_ids["<|endoftext|>"],
            "dtype": "float32",
            "eos_token_id": token_ids["<|im_end|>"],
            "head_dim": 8,
            "hidden_act": "silu",
            "hidden_size": 32,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "max_position_embeddings": 262144,
            "model_type": "qwen3_vl_text",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            # Interleaved multimodal rotary sections over head_dim / 2 = 4 frequencies (real: 24, 20, 20).
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [2, 1, 1], "rope_type": "default"},
            "rope_theta": 5000000,
            "use_cache": True,
            "vocab_size": vocab_size,
        },
        "tie_word_embeddings": False,
        "transformers_version": WRITTEN_BY,
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_config": {
            "deepstack_visual_indexes": [0],
            "depth": 2,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": 16,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": 32,
            "model_type": "qwen3_vl",
            "num_heads": 2,
            "num_position_embeddings": 16,
            "out_hidden_size": 32,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
    }
