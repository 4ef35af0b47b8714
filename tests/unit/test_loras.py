"""LoRA files and inputs without a server: the checks read from a safetensors header, the
content-addressed cache, the sources a path may name, and each dialect's mapping onto `loras`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from safetensors.numpy import save

from hidream_service.api.image_fetch import ImageInputs
from hidream_service.api.lora_inputs import HubReference, LoraInputError, LoraInputs, hub_reference
from hidream_service.config import Settings
from hidream_service.dialects.openai import GenerationRequest
from hidream_service.dialects.replicate import ReplicateEditInput, ReplicateImageInput
from hidream_service.dialects.wavespeed import WaveSpeedTextToImageInput
from hidream_service.image_inputs import ImageDecoder
from hidream_service.inference.lora_cache import LoraCache
from hidream_service.inference.lora_checks import (
    HIDREAM_TRANSFORMER,
    LayoutName,
    LoraFileError,
    TransformerShape,
    check_lora,
    read_header,
)
from hidream_service.models.hidream_i1 import HiDreamI1FastInput
from hidream_service.models.hidream_o1 import HiDreamO1Input
from hidream_service.storage import LocalOutputStorage

MODULE = "double_stream_blocks.0.block.attn1.to_q"


def pair(module: str = MODULE, prefix: str = "transformer.", rank: int = 4) -> dict[str, np.ndarray]:
    return {
        f"{prefix}{module}.lora_A.weight": np.ones((rank, 32), dtype=np.float32),
        f"{prefix}{module}.lora_B.weight": np.ones((32, rank), dtype=np.float32),
    }


def problem(tensors: dict[str, np.ndarray]) -> str:
    with pytest.raises(LoraFileError) as raised:
        check_lora(read_header(save(tensors)), HIDREAM_TRANSFORMER)
    return str(raised.value)


# -- the checks ----------------------------------------------------------------------------------


def test_the_module_list_is_the_transformers_own() -> None:
    import torch

    from hidream_service.inference.tiny import _transformer

    transformer = _transformer()
    linear = {name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)}

    assert TransformerShape.from_config(transformer.config).modules == linear


def test_both_layouts_pass_with_their_pairs() -> None:
    diffusers = check_lora(read_header(save({**pair(), **pair("final_layer.linear")})), HIDREAM_TRANSFORMER)
    comfyui = check_lora(read_header(save(pair(prefix="diffusion_model.", rank=8))), HIDREAM_TRANSFORMER)

    assert diffusers.layout is LayoutName.DIFFUSERS and set(diffusers.modules) == {MODULE, "final_layer.linear"}
    assert comfyui.layout is LayoutName.COMFYUI and comfyui.rank == 8


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (os.urandom(4096), "not a safetensors file"),
        (b"\x80\x04\x95" + os.urandom(64), "pickled checkpoint"),
        (b"PK\x03\x04" + os.urandom(64), "pickled checkpoint"),
        (b"\x02", "too short"),
        (struct.pack("<Q", 10_000) + b"{}", "not the length of a header it holds"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (save(pair()) + bytes(4), "size does not match"),
        (save(pair())[:-4], "lies outside the file"),
    ],
)
def test_what_is_not_a_safetensors_file_is_refused_by_its_first_bytes(content: bytes, words: str) -> None:
    with pytest.raises(LoraFileError, match=words):
        read_header(content)


def test_the_first_unknown_key_is_named() -> None:
    tensors = {**pair(), **pair("double_stream_blocks.0.block.attn1.to_z"), **pair("single_stream_blocks.99.block")}

    assert problem(tensors) == (
        "'transformer.double_stream_blocks.0.block.attn1.to_z.lora_A.weight' targets "
        "'double_stream_blocks.0.block.attn1.to_z', which the HiDream transformer does not have"
    )


@pytest.mark.parametrize(
    ("tensors", "words"),
    [
        ({**pair(), **pair("final_layer.linear", prefix="diffusion_model.")}, "all begin with 'transformer.'"),
        ({"unet.down.lora_A.weight": np.ones((4, 4), dtype=np.float32)}, "all begin with 'transformer.'"),
        ({f"diffusion_model.{MODULE}.lora_down.weight": np.ones((4, 32), dtype=np.float32)}, "lora_down/lora_up"),
        ({f"transformer.{MODULE}.weight": np.ones((32, 32), dtype=np.float32)}, "no full tensors"),
        ({f"transformer.{MODULE}.lora_A.weight": np.ones((4, 32), dtype=np.float32)}, "lora_B.weight' is missing"),
        ({**pair(), f"transformer.{MODULE}.lora_B.weight": np.ones((32, 2), dtype=np.float32)}, "has rank 2"),
        ({key: value.astype(np.int8) for key, value in pair().items()}, "must be F16, BF16, F32 or F64"),
        ({"text_encoder.layer.lora_A.weight": np.ones((4, 4), dtype=np.float32)}, "targets a text encoder"),
        ({}, "holds no tensors"),
    ],
)
def test_what_diffusers_would_not_load_for_hidream_is_refused(tensors: dict[str, np.ndarray], words: str) -> None:
    assert words in problem(tensors)


# -- the cache -----------------------------------------------------------------------------------


def test_the_cache_keeps_files_by_content_and_remembers_sources(tmp_path: Path) -> None:
    cache = LoraCache(tmp_path, budget_bytes=1 << 20)

    digest = cache.store(b"one", source="https://example.com/a.safetensors")

    assert digest == hashlib.sha256(b"one").hexdigest()
    assert cache.find(digest) == tmp_path / "files" / f"{digest}.safetensors"
    assert cache.digest_of_source("https://example.com/a.safetensors") == digest
    assert cache.digest_of_source("https://example.com/b.safetensors") is None
    assert cache.store(b"one") == digest and cache.size_bytes() == 3


def test_past_its_budget_the_least_recently_used_file_leaves(tmp_path: Path) -> None:
    cache = LoraCache(tmp_path, budget_bytes=250)
    oldest = cache.store(b"a" * 100, source="a")
    used = cache.store(b"b" * 100)
    past = time.time() - 60
    for digest in (oldest, used):  # stored a minute ago ...
        os.utime(cache.path_of(digest), (past, past))
    cache.find(used)  # ... and one of them used since

    newest = cache.store(b"c" * 100)

    assert cache.find(oldest) is None and cache.digest_of_source("a") is None
    assert cache.find(used) is not None and cache.find(newest) is not None


def test_a_file_larger_than_the_budget_is_still_kept_until_the_next(tmp_path: Path) -> None:
    cache = LoraCache(tmp_path, budget_bytes=10)

    big = cache.store(b"x" * 50)

    assert cache.find(big) is not None


# -- sources -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reference"),
    [
        ("owner/repo", HubReference("owner/repo", None, None)),
        ("owner/repo@v1.0", HubReference("owner/repo", None, "v1.0")),
        ("owner/repo/style.safetensors", HubReference("owner/repo", "style.safetensors", None)),
        (
            "Owner-1/re.po_2/sub/dir/x.safetensors@abc123",
            HubReference("Owner-1/re.po_2", "sub/dir/x.safetensors", "abc123"),
        ),
        ("https://example.com/x.safetensors", None),
        ("/etc/passwd", None),
        ("owner/repo/../../x", None),
        ("just-a-name", None),
    ],
)
def test_hugging_face_references(path: str, reference: HubReference | None) -> None:
    assert hub_reference(path) == reference


def lora_inputs(tmp_path: Path, *, hub: bool, fetched: list[HubReference]) -> LoraInputs:
    settings = Settings(data_dir=tmp_path, lora_hub=hub, max_lora_bytes=1 << 20)
    content = save(pair())

    def stand_in_hub(reference: HubReference, max_bytes: int) -> bytes:
        fetched.append(reference)
        return content

    images = ImageInputs(
        httpx.AsyncClient(),
        LocalOutputStorage(tmp_path / "outputs"),
        max_bytes=1,
        decoder=ImageDecoder(max_pixels=1, max_decoded_bytes=1, max_concurrent=1),
        timeout=1.0,
    )
    inputs = LoraInputs.for_settings(settings, images, images.storage)
    inputs.hub_fetch = stand_in_hub
    return inputs


def test_hub_sources_are_refused_without_hub_access(tmp_path: Path) -> None:
    fetched: list[HubReference] = []
    inputs = lora_inputs(tmp_path, hub=False, fetched=fetched)

    with pytest.raises(LoraInputError, match=r"no hub access \(HIDREAM_LORA_HUB\)"):
        asyncio.run(inputs.prepare("owner/repo", own_hosts=set(), target=HIDREAM_TRANSFORMER, pinned=None))
    assert fetched == []


def test_a_hub_source_is_fetched_once_then_read_from_the_cache(tmp_path: Path) -> None:
    fetched: list[HubReference] = []
    inputs = lora_inputs(tmp_path, hub=True, fetched=fetched)

    async def twice() -> list[str]:
        target = HIDREAM_TRANSFORMER
        return [await inputs.prepare("owner/repo@main", own_hosts=set(), target=target, pinned=None) for _ in "ab"]

    first, second = asyncio.run(twice())

    assert first == second == hashlib.sha256(save(pair())).hexdigest()
    assert fetched == [HubReference("owner/repo", None, "main")]
    assert inputs.cache.find(first) is not None


def test_a_path_that_is_no_source_says_what_one_is(tmp_path: Path) -> None:
    inputs = lora_inputs(tmp_path, hub=True, fetched=[])

    with pytest.raises(LoraInputError, match="an http\\(s\\) URL of a .safetensors file"):
        asyncio.run(inputs.prepare("ftp://x/y", own_hosts=set(), target=HIDREAM_TRANSFORMER, pinned=None))


# -- the input and each dialect's names ----------------------------------------------------------


def test_loras_are_limited_in_number_and_scale() -> None:
    one = {"path": "https://example.com/a.safetensors"}

    assert HiDreamI1FastInput.model_validate({"prompt": "x", "loras": [one] * 3}).lora_key() == ((None, 1.0),) * 3
    with pytest.raises(ValidationError, match="at most 3 items"):
        HiDreamI1FastInput.model_validate({"prompt": "x", "loras": [one] * 4})
    with pytest.raises(ValidationError, match="less than or equal to 4"):
        HiDreamI1FastInput.model_validate({"prompt": "x", "loras": [{**one, "scale": 4.5}]})


def test_o1_refuses_loras_by_name_and_takes_an_empty_list() -> None:
    with pytest.raises(ValidationError) as raised:
        HiDreamO1Input.model_validate({"prompt": "x", "loras": [{"path": "https://example.com/a.safetensors"}]})

    (error,) = raised.value.errors()
    assert error["loc"] == ("loras",) and error["msg"].startswith("HiDream-O1 takes no LoRAs")
    assert HiDreamO1Input.model_validate({"prompt": "x", "loras": []}).prompt == "x"


def test_replicate_names_map_onto_loras() -> None:
    both = {
        "lora_weights": "https://e.com/a.safetensors",
        "lora_scale": 0.8,
        "extra_lora": "o/r",
        "extra_lora_scale": -1,
    }

    image = ReplicateImageInput.model_validate({"prompt": "x", **both}).to_fal()
    edit = ReplicateEditInput.model_validate(
        {"image": "https://e.com/i.png", "prompt": "x", "extra_lora": "o/r"}
    ).to_fal()

    assert image["loras"] == [{"path": "https://e.com/a.safetensors", "scale": 0.8}, {"path": "o/r", "scale": -1.0}]
    assert edit["loras"] == [{"path": "o/r", "scale": 1.0}]
    assert "loras" not in ReplicateImageInput.model_validate({"prompt": "x", "lora_scale": 0.5}).to_fal()


def test_wavespeed_and_openai_pass_loras_through() -> None:
    loras = [{"path": "https://e.com/a.safetensors", "scale": 0.5}]

    wavespeed = WaveSpeedTextToImageInput.model_validate({"prompt": "x", "loras": loras}).to_fal()
    generation = GenerationRequest.model_validate({"prompt": "x", "loras": loras}).to_fal()
    from_a_form = GenerationRequest.model_validate({"prompt": "x", "loras": '[{"path": "o/r"}]'}).to_fal()

    assert wavespeed["loras"] == loras and generation["loras"] == loras
    assert from_a_form["loras"] == [{"path": "o/r", "scale": 1.0}]
