"""Weights exactly as `hidream weights download` leaves them, served by `hidream serve --weights DIR`.

A stand-in hub holds each published repository's files (the tiny builds, which write the published
formats, plus files the downloads leave out); the real download code fetches each repository with
its allow patterns through a stand-in of `snapshot_download` that writes what the hub client writes
beside the files (`.cache/huggingface/`), then hashes and locks them. The server loads that root,
through the lock file's checks, and every endpoint answers one job.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from safetensors.torch import load_file

from hidream_service.inference.download import download_model
from hidream_service.inference.lock import read_lock
from hidream_service.inference.manifest import verify_weights
from hidream_service.inference.memory_modes import TEXT_ENCODERS
from hidream_service.inference.recipes import FULL, LLAMA_DIRECTORY
from hidream_service.inference.weights import SERVICE_METADATA, WeightsLayout
from hidream_service.models.family import Endpoint, Task
from hidream_service.models.registry import ALL, DEFAULT_REGISTRY
from tests.integration.harness import ServerProcess

#: Files the published repositories hold that no loader reads, so no download fetches (but O1's,
#: which fetch the whole repository).
NOT_FETCHED = ("README.md", "LICENSE", "original/params.json", "assets/demo.jpg")


class HubStandIn:
    """`snapshot_download(repo_id, revision, local_dir, allow_patterns, token)` from a directory of
    repositories: the matching files, and the bookkeeping the hub client keeps in the folder."""

    def __init__(self, repositories: Path) -> None:
        self.repositories = repositories
        self.fetched: dict[str, list[str]] = {}

    def __call__(
        self, *, repo_id: str, revision: str, local_dir: Path, allow_patterns: list[str] | None, token: str | None
    ) -> str:
        source = self.repositories / repo_id
        files = sorted(path.relative_to(source).as_posix() for path in source.rglob("*") if path.is_file())
        wanted = list(filter_repo_objects(files, allow_patterns=allow_patterns))
        if SERVICE_METADATA in files:
            wanted.append(SERVICE_METADATA)  # not published: what keeps the tiny models small
        self.fetched[repo_id] = wanted
        bookkeeping = local_dir / ".cache" / "huggingface"
        (bookkeeping / "download").mkdir(parents=True, exist_ok=True)
        (bookkeeping / ".gitignore").write_text("*")
        for name in wanted:
            target = local_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target)
            metadata = bookkeeping / "download" / f"{name}.metadata"
            metadata.parent.mkdir(parents=True, exist_ok=True)
            metadata.write_text(f"{revision}\n{hashlib.sha256(target.read_bytes()).hexdigest()}\n0.0\n")
        return str(local_dir)


def commit_of(repo: str, token: str | None) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


@pytest.fixture(scope="module")
def downloaded(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HubStandIn]:
    """Every repository the service loads, downloaded from the stand-in hub into a fresh root."""
    sources = DEFAULT_REGISTRY.sources_for(ALL)
    hub = tmp_path_factory.mktemp("hub")
    for source in sources:
        repository = hub / source.repo
        shutil.copytree(tiny_weights / source.directory, repository)
        for name in NOT_FETCHED:
            (repository / name).parent.mkdir(parents=True, exist_ok=True)
            (repository / name).write_text("not loaded\n")
    root = tmp_path_factory.mktemp("downloaded")
    stand_in = HubStandIn(hub)
    download_model(sources, root, token="hf_stand_in", fetch=stand_in, resolve_revision=commit_of)
    return root, stand_in


@pytest.fixture(scope="module")
def server(downloaded: tuple[Path, HubStandIn], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root, _ = downloaded
    # Room for every model at once: each loads once, in the order the endpoints are listed.
    env = {"HIDREAM_MAX_LOADED_PIPELINES": str(len(DEFAULT_REGISTRY.models))}
    with ServerProcess(tmp_path_factory.mktemp("data"), weights=str(root), env=env) as running:
        yield running


def test_the_download_fetches_only_what_loads_and_locks_it(downloaded: tuple[Path, HubStandIn]) -> None:
    root, stand_in = downloaded

    assert verify_weights(root) == []  # every file hashed into the lock file is there, byte for byte
    locked = read_lock(root)
    assert set(locked) == {source.repo for source in DEFAULT_REGISTRY.sources_for(ALL)}
    for source in DEFAULT_REGISTRY.sources_for(ALL):
        if source.allow_patterns is not None:  # O1's repositories are fetched whole
            assert not set(stand_in.fetched[source.repo]) & set(NOT_FETCHED), source.repo
        assert (root / source.directory / ".cache" / "huggingface" / ".gitignore").is_file()


def tensors_not_from_the_files(module: Any, folder: Path) -> list[str]:
    """The module's tensors that are not exactly what the folder's safetensors hold under their name
    (or under the name of the tensor they are tied to): what loading left at its initial values."""
    stored: dict[str, torch.Tensor] = {}
    for file in folder.glob("*.safetensors"):
        stored.update(load_file(str(file)))
    state = module.state_dict()
    tied_to = {tensor.data_ptr(): name for name, tensor in state.items() if name in stored}
    return [
        name
        for name, tensor in state.items()
        if (source := name if name in stored else tied_to.get(tensor.data_ptr())) is None
        or not torch.equal(tensor, stored[source].to(tensor.dtype))
    ]


def test_every_i1_component_holds_the_published_tensors(downloaded: tuple[Path, HubStandIn]) -> None:
    root, _ = downloaded
    pipeline = DEFAULT_REGISTRY.pipelines(WeightsLayout(root), "cpu").get(FULL.name).pipeline
    folders = {name: root / FULL.directory / name for name in ("transformer", "vae", *TEXT_ENCODERS[:3])}
    folders["text_encoder_4"] = root / LLAMA_DIRECTORY

    for name, folder in folders.items():
        assert tensors_not_from_the_files(getattr(pipeline, name), folder) == [], name


def picture(width: int = 96, height: int = 64) -> str:
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 60).convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def one_job(endpoint: Endpoint) -> dict[str, Any]:
    """The smallest job of an endpoint's task."""
    fast = {"num_inference_steps": 2, "seed": 3, "output_format": "png", "enable_safety_checker": False}
    if endpoint.task is Task.LIFECYCLE:
        return {}
    if endpoint.task is Task.TEXT_TO_IMAGE:
        return {"prompt": "a red boat", **fast}
    if endpoint.task is Task.IMAGE_TO_IMAGE:
        return {"prompt": "a red boat", "image_url": picture(), "strength": 1.0, **fast}
    if endpoint.task is Task.INSTRUCTION_EDIT:
        return {"image_url": picture(), "edit_instruction": "make it red", **fast}
    assert endpoint.task is Task.REFERENCE_EDIT
    return {"prompt": "the same, in red", "reference_image_urls": [picture()], **fast}


def test_every_endpoint_is_served_and_answers(downloaded: tuple[Path, HubStandIn], server: ServerProcess) -> None:
    root, _ = downloaded
    assert DEFAULT_REGISTRY.served(WeightsLayout(root)) == DEFAULT_REGISTRY.endpoints

    answered = {}
    for endpoint_id, endpoint in DEFAULT_REGISTRY.endpoints.items():
        response = httpx.post(f"{server.url}/run/{endpoint_id}", json=one_job(endpoint), timeout=120)
        assert response.status_code == 200, f"{endpoint_id}: {response.text}\n{server.log()[-4000:]}"
        answered[endpoint_id] = response.json()

    for endpoint_id, result in answered.items():
        images = result.get("images", [])
        if DEFAULT_REGISTRY.endpoints[endpoint_id].model is not None:
            assert len(images) == 1 and images[0]["width"] > 0, endpoint_id
            assert httpx.get(images[0]["url"]).status_code == 200
