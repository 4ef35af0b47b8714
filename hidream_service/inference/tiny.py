"""Tiny random-weight HiDream-I1 and E1 weights, built offline and saved as the published repositories are.

Same architectures as the real checkpoints (CLIP-L/G, T5, Llama, 16-channel VAE with 8x scale,
the sparse-MoE HiDream transformer; O1's Qwen3-VL is in hidream_o1/tiny.py), a few thousand
parameters each. The images are noise; loading, scheduling, the denoising loop, cancel and decoding
are all real. Each model family builds its own (`ModelFamily.build_tiny`); `ensure_tiny_weights`
builds them all once.

Each folder holds the files its published repository holds, in the formats a `hf download` of it
leaves (docs/weights.md lists them), so that every load here goes through transformers' and
diffusers' handling of those formats, not of what the installed versions would write:

- configs as the transformers 4.x releases that wrote them do (`torch_dtype`, `rope_scaling` with
  `rope_theta`), not transformers 5's `dtype` and `rope_parameters`;
- the CLIP tokenizers as `vocab.json` + `merges.txt`, T5's as a sentencepiece `spiece.model`, each
  with its `tokenizer_config.json` and `special_tokens_map.json` and no `tokenizer.json`; Llama's as
  `tokenizer.json` with the 256 reserved special tokens;
- safetensors sharded with their index where the published weights are (the T5 encoder, the
  transformers, the Llama), single files where they are not (CLIP, the VAE, E1-Full's file);
- `model_index.json` without the Llama components, which the published I1 repositories do not ship.

The only file real weights lack is `hidream_service.json`, which shrinks what the models render.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hidream_service.inference.recipes import FULL, LLAMA_DIRECTORY, EditRecipe, Variant
from hidream_service.inference.weights import SERVICE_METADATA, WeightsLayout

TINY_SAMPLE_SIZE = 8  # latent side; x8 VAE scale = 64 px renders
_COMPLETE_MARKER = ".complete"

#: Shard limits that split each tiny model into about as many files as the published one has.
T5_SHARD_SIZE = "60KB"  # 2 shards, as text_encoder_3/
TRANSFORMER_SHARD_SIZE = "300KB"  # several shards, as transformer/ (7 in the real one)
LLAMA_SHARD_SIZE = "30KB"  # several shards, as the Llama (4 in the real one)

#: What wrote each published config: transformers 4.x releases (the values are indicative).
I1_ENCODERS_WRITTEN_BY = "4.50.0.dev0"
LLAMA_WRITTEN_BY = "4.43.0.dev0"


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
    """Write tiny HiDream-I1 variants (each its published repository's folder, without the Llama
    encoder, as the published repos are) and the tiny Llama text encoder they share, under `root`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from hidream_service.inference.pipelines import build_scheduler, quiet_loading

    quiet_loading()
    torch.manual_seed(999)
    write_tiny_llama(root / LLAMA_DIRECTORY)
    for index, variant in enumerate(variants):
        torch.manual_seed(1000 + index)  # each variant gets its own random weights
        directory = root / variant.directory
        build_scheduler(variant, None).save_pretrained(directory / "scheduler")
        _vae().save_pretrained(directory / "vae")
        clip_vocabulary = _write_clip_tokenizer(directory / "tokenizer", pad_token="<|endoftext|>")
        _write_clip_tokenizer(directory / "tokenizer_2", pad_token="!")  # as the CLIP-G tokenizers of SDXL and SD3
        _save_transformers_model(directory / "text_encoder", _clip_config(clip_vocabulary, "quick_gelu"))
        _save_transformers_model(directory / "text_encoder_2", _clip_config(clip_vocabulary, "gelu"))
        t5_vocabulary = _write_t5_tokenizer(directory / "tokenizer_3")
        _save_transformers_model(directory / "text_encoder_3", _t5_config(t5_vocabulary), shard_size=T5_SHARD_SIZE)
        _transformer().save_pretrained(directory / "transformer", max_shard_size=TRANSFORMER_SHARD_SIZE)
        write_json(directory / "model_index.json", _model_index(variant))
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


# -- the published file formats ----------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def token_entry(content: str, *, normalized: bool = False, special: bool | None = True) -> dict[str, Any]:
    """A token as transformers 4.x writes it in `added_tokens_decoder` (special=None: as in
    special_tokens_map.json, without the flag)."""
    entry: dict[str, Any] = {
        "content": content,
        "lstrip": False,
        "normalized": normalized,
        "rstrip": False,
        "single_word": False,
    }
    if special is not None:
        entry["special"] = special
    return entry


def _save_transformers_model(directory: Path, published_config: dict[str, Any], shard_size: str | None = None) -> None:
    """A random model built from a config in its published (transformers 4.x) form, its weights saved
    as transformers does and its config.json left in that published form."""
    import transformers

    write_json(directory / "config.json", published_config)
    config = transformers.AutoConfig.from_pretrained(directory)
    model = getattr(transformers, published_config["architectures"][0])(config).eval()
    model.save_pretrained(directory, **({"max_shard_size": shard_size} if shard_size else {}))
    write_json(directory / "config.json", published_config)  # save_pretrained rewrote it in 5.x form
    generation_config = directory / "generation_config.json"
    if generation_config.is_file():
        generation_config.unlink()  # the encoders' published folders have none


def _model_index(variant: Variant) -> dict[str, Any]:
    """An I1 repository's model_index.json: no text_encoder_4 or tokenizer_4 (the gated Llama is
    not in the repository; the pipeline is given it)."""
    return {
        "_class_name": "HiDreamImagePipeline",
        "_diffusers_version": "0.33.0.dev0",
        "scheduler": ["diffusers", variant.scheduler],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "HiDreamImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2-style byte-level BPE uses for the bytes, in the order the
    published vocabularies list them: the printable bytes as themselves, then the others shifted
    past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]


#: A few merges, so that the merge tables are read and applied (each merges two existing symbols).
_CLIP_MERGES = (("c", "a"), ("ca", "t</w>"), ("o", "f</w>"), ("p", "h"), ("ph", "o"), ("t", "o</w>"), ("pho", "to</w>"))


def _write_clip_tokenizer(directory: Path, *, pad_token: str) -> int:
    """A CLIP tokenizer as published: vocab.json (byte symbols, the same with `</w>`, merges, then the
    two special tokens last), merges.txt, special_tokens_map.json, tokenizer_config.json. Returns
    the vocabulary size."""
    alphabet = byte_level_alphabet()
    symbols = [*alphabet, *(symbol + "</w>" for symbol in alphabet), *(a + b for a, b in _CLIP_MERGES)]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    vocabulary = {symbol: index for index, symbol in enumerate(symbols)}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocabulary, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _CLIP_MERGES))
    start, end = "<|startoftext|>", "<|endoftext|>"
    write_json(
        directory / "special_tokens_map.json",
        {
            "bos_token": token_entry(start, normalized=True, special=None),
            "eos_token": token_entry(end, normalized=True, special=None),
            "pad_token": pad_token,
            "unk_token": token_entry(end, normalized=True, special=None),
        },
    )
    added = {str(vocabulary[token]): token_entry(token, normalized=True) for token in (start, end)}
    if pad_token not in (start, end):
        added[str(vocabulary[pad_token])] = token_entry(pad_token)
    write_json(
        directory / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "added_tokens_decoder": dict(sorted(added.items(), key=lambda item: int(item[0]))),
            "bos_token": start,
            "clean_up_tokenization_spaces": True,
            "do_lower_case": True,
            "eos_token": end,
            "errors": "replace",
            "model_max_length": 77,
            "pad_token": pad_token,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": end,
        },
    )
    return len(vocabulary)


def _clip_config(vocab_size: int, activation: str) -> dict[str, Any]:
    return {
        "architectures": ["CLIPTextModelWithProjection"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        # 2, as in the published configs: the pooled token is then the highest id, <|endoftext|>.
        "eos_token_id": 2,
        "hidden_act": activation,
        "hidden_size": 32,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 128,  # the pipeline pads CLIP prompts to 128 tokens
        "model_type": "clip_text_model",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 1,
        "projection_dim": 32,
        "torch_dtype": "float32",
        "transformers_version": I1_ENCODERS_WRITTEN_BY,
        "vocab_size": vocab_size,
    }


T5_EXTRA_IDS = 100
#: Text the tiny sentencepiece model is trained on: enough for every character to be a piece.
_T5_CORPUS = (
    string.ascii_lowercase,
    string.ascii_uppercase,
    string.digits,
    string.punctuation,
    "a photo of a cat sitting on a red chair",
    "the quick brown fox jumps over the lazy dog",
    "make it snow; a boat on a lake at sunset, oil painting",
)


def _write_t5_tokenizer(directory: Path) -> int:
    """T5's tokenizer as published: a sentencepiece unigram `spiece.model` (trained here on a few
    lines, with sentencepiece's standard normalisation), 100 `<extra_id_N>` tokens after its pieces,
    special_tokens_map.json and tokenizer_config.json. Returns the vocabulary size."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_T5_CORPUS * 8),
        model_writer=model,
        vocab_size=120,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spiece.model").write_bytes(model.getvalue())
    extra = [f"<extra_id_{index}>" for index in range(T5_EXTRA_IDS)]
    added = {str(index): token_entry(token) for index, token in enumerate(("<pad>", "</s>", "<unk>"))}
    added.update({str(pieces + T5_EXTRA_IDS - 1 - index): token_entry(token) for index, token in enumerate(extra)})
    write_json(
        directory / "special_tokens_map.json",
        {
            "additional_special_tokens": extra,
            "eos_token": token_entry("</s>", special=None),
            "pad_token": token_entry("<pad>", special=None),
            "unk_token": token_entry("<unk>", special=None),
        },
    )
    write_json(
        directory / "tokenizer_config.json",
        {
            "add_prefix_space": True,
            "added_tokens_decoder": dict(sorted(added.items(), key=lambda item: int(item[0]))),
            "additional_special_tokens": extra,
            "clean_up_tokenization_spaces": True,
            "eos_token": "</s>",
            "extra_ids": T5_EXTRA_IDS,
            "legacy": True,
            "model_max_length": 512,
            "pad_token": "<pad>",
            "sp_model_kwargs": {},
            "tokenizer_class": "T5Tokenizer",
            "unk_token": "<unk>",
        },
    )
    return pieces + T5_EXTRA_IDS


def _t5_config(vocab_size: int) -> dict[str, Any]:
    """T5 v1.1's encoder config (gated GELU, untied head), at tiny sizes."""
    return {
        "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": 37,
        "d_kv": 8,
        "d_model": 32,
        "decoder_start_token_id": 0,
        "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-06,
        "model_type": "t5",
        "num_decoder_layers": 2,
        "num_heads": 4,
        "num_layers": 2,
        "output_past": True,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 8,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": I1_ENCODERS_WRITTEN_BY,
        "use_cache": True,
        "vocab_size": vocab_size + (-vocab_size % 64),  # padded past the tokenizer, as 32128 > 32100
    }


#: Llama 3's pre-tokenizer split (public, in its tokenizer.json).
LLAMA_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_LLAMA_MERGES = (("Ġ", "a"), ("t", "h"), ("th", "e"), ("Ġ", "c"), ("Ġc", "a"), ("o", "r"))
#: Llama 3's first special tokens, in id order; the rest of its 256 are reserved ones.
_LLAMA_NAMED_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
LLAMA_SPECIALS = 256
#: A stand-in for Llama 3.1's (long) chat template: the pipeline never applies it.
_LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
)


def llama_special_tokens() -> list[str]:
    reserved = (f"<|reserved_special_token_{index}|>" for index in range(3, LLAMA_SPECIALS))
    return [*_LLAMA_NAMED_SPECIALS, *reserved][:LLAMA_SPECIALS]


def byte_level_bpe(split_pattern: str, merges: Iterable[tuple[str, str]], specials: Sequence[str]) -> Any:
    """A byte-level BPE tokenizer as Llama 3 and Qwen publish theirs: the regex split, then bytes,
    the merges, and the special tokens after the vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    merges = list(merges)
    symbols = [*byte_level_alphabet(), *(a + b for a, b in merges)]
    vocabulary = {symbol: index for index, symbol in enumerate(symbols)}
    tokenizer = Tokenizer(BPE(vocab=vocabulary, merges=merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return tokenizer


def write_tiny_llama(directory: Path) -> None:
    """Llama-3.1-8B-Instruct's folder as published (without original/): config.json in the 4.43
    form with its llama3 rope scaling, generation_config.json, sharded safetensors with their index,
    tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    from tokenizers import processors

    specials = llama_special_tokens()
    tokenizer = byte_level_bpe(LLAMA_SPLIT, _LLAMA_MERGES, specials)
    bos, end_of_text, eom, eot = (tokenizer.token_to_id(token) for token in specials[:2] + specials[8:10])
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    first_special = tokenizer.token_to_id(specials[0])
    write_json(
        directory / "tokenizer_config.json",
        {
            "added_tokens_decoder": {
                str(first_special + index): token_entry(token) for index, token in enumerate(specials)
            },
            "bos_token": specials[0],
            "chat_template": _LLAMA_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": True,
            "eos_token": "<|eot_id|>",
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    write_json(
        directory / "special_tokens_map.json",
        {"bos_token": token_entry(specials[0], special=None), "eos_token": token_entry("<|eot_id|>", special=None)},
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": [end_of_text, eom, eot],
        "hidden_act": "silu",
        "hidden_size": 16,
        "initializer_range": 0.02,
        "intermediate_size": 37,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": LLAMA_WRITTEN_BY,
        "use_cache": True,
        "vocab_size": tokenizer.get_vocab_size(),
    }
    _save_transformers_model(directory, config, shard_size=LLAMA_SHARD_SIZE)
    write_json(
        directory / "generation_config.json",
        {
            "bos_token_id": bos,
            "do_sample": True,
            "eos_token_id": [end_of_text, eom, eot],
            "temperature": 0.6,
            "top_p": 0.9,
            "transformers_version": LLAMA_WRITTEN_BY,
        },
    )


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
