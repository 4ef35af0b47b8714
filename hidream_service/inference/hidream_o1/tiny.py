"""A tiny random-weight HiDream-O1, saved in the published checkpoint's layout.

The same classes as the real model (Qwen3-VL text decoder and vision encoder with deepstack, the O1
pixel embedder, timestep embedder and pixel head) at a few tens of thousands of parameters; a byte-level
tokenizer with the Qwen and O1 special tokens and a chat template in Qwen3-VL's format, built in
memory. Only the sizes shrink: 2x2-pixel patches and presets divided by 32 (a 64x64 square), set
through `hidream_service.json` and the config's patch size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hidream_service.inference.hidream_o1.model import PATCH_SIZE_ATTRIBUTE
from hidream_service.inference.weights import SERVICE_METADATA

TINY_PATCH_SIZE = 2
TINY_DIVISOR = 32
TINY_CONDITION_IMAGE_SIZE = 64
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|boi_token|>",
    "<|bor_token|>",
    "<|eor_token|>",
    "<|bot_token|>",
    "<|tms_token|>",
)
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
    """Write a tiny O1 checkpoint folder (config, safetensors, tokenizer, image processor, template)."""
    import torch

    from hidream_service.inference.hidream_o1.model import HiDreamO1ForConditionalGeneration

    tokenizer = _tokenizer()
    tokenizer.save_pretrained(directory)
    _image_processor().save_pretrained(directory)
    torch.manual_seed(seed)
    model = HiDreamO1ForConditionalGeneration(_config(tokenizer)).eval()
    model.save_pretrained(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = [ARCHITECTURE]
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    metadata = {"resolution_divisor": TINY_DIVISOR, "condition_image_size": TINY_CONDITION_IMAGE_SIZE}
    (directory / SERVICE_METADATA).write_text(json.dumps(metadata) + "\n")


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[token for token in SPECIAL_TOKENS if token not in ("<|im_end|>", "<|endoftext|>")],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _image_processor() -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # Qwen3-VL's vision patching (16-pixel patches, 2x2 merge, 2 frames), with a small pixel floor.
    return Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128}
    )


def _config(tokenizer: Any) -> Any:
    from transformers import Qwen3VLConfig

    def token(name: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(name))

    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 8192,
            # Interleaved multimodal rotary sections over head_dim / 2 = 4 frequencies (real: 24, 20, 20).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 32,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )
    setattr(config, PATCH_SIZE_ATTRIBUTE, TINY_PATCH_SIZE)
    return config
