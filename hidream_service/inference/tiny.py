"""Tiny random-weight HiDream-I1 and E1 weights, built offline and saved exactly like real ones.

Same architectures as the real checkpoints (CLIP-L/G, T5, Llama, 16-channel VAE with 8x scale,
the sparse-MoE HiDream transformer; O1's Qwen3-VL is in hidream_o1/tiny.py), a few thousand
parameters each, tokenizers built in memory. The images are noise; loading, scheduling, the
denoising loop, cancel and decoding are all real. Each model family builds its own
(`ModelFamily.build_tiny`); `ensure_tiny_weights` builds them all once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import string
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hidream_service.inference.recipes import FULL, LLAMA_DIRECTORY, EditRecipe, Variant
from hidream_service.inference.weights import SERVICE_METADATA, WeightsLayout

TINY_SAMPLE_SIZE = 8  # latent side; x8 VAE scale = 64 px renders
_CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation
_COMPLETE_MARKER = ".complete"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tiny_weights(layout: WeightsLayout, build: Callable[[Path], None], families: Sequence[str]) -> None:
    """Run `build` (the tiny builders of `families`) once into the layout's root; concurrent workers
    wait for the first one to finish. A root built for other families is built again."""
    root = layout.root
    marker = root / _COMPLETE_MARKER
    built_for = "".join(f"{family}\n" for family in families)
    if marker.is_file() and marker.read_text() == built_for:
        return
    with _exclusive(root.parent / f".{root.name}.lock"):
        if marker.is_file() and marker.read_text() == built_for:
            return
        building = root.parent / f".{root.name}.building"
        shutil.rmtree(building, ignore_errors=True)
        build(building)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(building, root)
        marker.write_text(built_for)


def build_tiny_i1(root: Path, variants: Sequence[Variant]) -> None:
    """Write tiny HiDream-I1 variants (each a diffusers folder, without the Llama encoder, as the
    published repos are) and the tiny Llama text encoder they share, under `root`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from diffusers import HiDreamImagePipeline

    from hidream_service.inference.pipelines import build_scheduler, quiet_loading

    quiet_loading()

    llama_tokenizer = _llama_tokenizer()
    llama = _llama(llama_tokenizer)
    llama.save_pretrained(root / LLAMA_DIRECTORY)
    llama_tokenizer.save_pretrained(root / LLAMA_DIRECTORY)

    for index, variant in enumerate(variants):
        torch.manual_seed(1000 + index)  # each variant gets its own random transformer
        pipeline = HiDreamImagePipeline(
            scheduler=build_scheduler(variant, None),
            vae=_vae(),
            text_encoder=_clip(),
            tokenizer=_clip_tokenizer(),
            text_encoder_2=_clip(),
            tokenizer_2=_clip_tokenizer(),
            text_encoder_3=_t5(),
            tokenizer_3=_t5_tokenizer(),
            text_encoder_4=llama,
            tokenizer_4=llama_tokenizer,
            transformer=_transformer(),
        )
        directory = root / variant.directory
        pipeline.save_pretrained(directory)
        _drop_llama_like_the_published_repos(directory)
        _write_metadata(directory)


def build_tiny_e1(root: Path, recipes: Sequence[EditRecipe]) -> None:
    """Write tiny HiDream-E1 checkpoints over the tiny I1-Full under `root` (built first):
    E1-Full's LoRA file, E1.1's transformer folder."""
    from diffusers import HiDreamImageTransformer2DModel

    for recipe in recipes:
        if recipe.lora:
            i1_full = HiDreamImageTransformer2DModel.from_pretrained(root / FULL.directory, subfolder="transformer")
            _e1_full_lora_file(i1_full, root / recipe.directory, recipe.weights)
        else:
            _e1_1_transformer(root / recipe.directory, recipe.weights)


def _write_metadata(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SERVICE_METADATA).write_text(json.dumps({"default_sample_size": TINY_SAMPLE_SIZE}) + "\n")


#: Full tensors the tiny E1-Full file replaces besides its LoRA, standing in for the real file's.
_E1_FULL_REPLACED = ("x_embedder.proj.weight", "x_embedder.proj.bias")


def _e1_full_lora_file(i1_full_transformer: Any, directory: Path, file_name: str) -> None:
    """Like HiDream-E1-Full.safetensors: the E1 LoRA (non-zero, so it changes the output) and a few
    full tensors, named as they are on an I1-Full transformer with that adapter added."""
    import torch
    from safetensors.torch import save_file

    from hidream_service.inference.hidream_e1 import lora_config

    torch.manual_seed(2000)
    transformer = i1_full_transformer
    transformer.add_adapter(lora_config())
    state = transformer.state_dict()
    kept = {}
    for name, value in state.items():
        if "lora_" in name:
            kept[name] = torch.randn_like(value) * 0.1
        elif name in _E1_FULL_REPLACED:
            kept[name] = value + torch.randn_like(value) * 0.1
    _write_metadata(directory)
    save_file({name: value.contiguous() for name, value in kept.items()}, str(directory / file_name))


def _e1_1_transformer(directory: Path, folder: str) -> None:
    """Like HiDream-E1-1/transformer: a full I1-Full-shaped transformer, sharded."""
    import torch

    torch.manual_seed(3000)
    _write_metadata(directory)
    _transformer().save_pretrained(directory / folder, max_shard_size="600KB")


def _drop_llama_like_the_published_repos(directory: Path) -> None:
    # The published HiDream-I1 repos do not ship the gated Llama; it is loaded from its own directory.
    for name in ("text_encoder_4", "tokenizer_4"):
        shutil.rmtree(directory / name, ignore_errors=True)
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["text_encoder_4"] = [None, None]
    index["tokenizer_4"] = [None, None]
    index_path.write_text(json.dumps(index, indent=2) + "\n")


def _clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _CHARACTERS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[])


def _t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for char in _CHARACTERS:
        vocab += [(char, -5.0), ("\u2581" + char, -4.0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _llama_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"):
        vocab[special] = len(vocab)
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")


def _clip() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=256,
        projection_dim=32,
        max_position_embeddings=128,  # the pipeline pads CLIP prompts to 128 tokens
    )
    return CLIPTextModelWithProjection(config).eval()


def _t5() -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=256,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def _llama(tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=max(512, len(tokenizer)),
        hidden_size=16,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def _vae() -> Any:
    from diffusers import AutoencoderKL

    # Four blocks give the real 8x spatial scale; 16 latent channels like the real Flux-style VAE.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ).eval()


def _transformer() -> Any:
    from diffusers import HiDreamImageTransformer2DModel

    return HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=[32, 16],  # [T5 d_model, Llama hidden size]
        text_emb_dim=64,  # CLIP-L + CLIP-G pooled projections
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(32, 32),  # 4:1 at the tiny area is 16x4 patches
        llama_layers=(0, 1),
    ).eval()
