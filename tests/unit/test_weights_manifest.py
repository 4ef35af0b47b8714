"""Weights at pinned revisions: the download refuses what is not pinned, writes a manifest, and
loading refuses a directory that does not match it. The hub is replaced by a fake `fetch`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from hidream_service.inference.download import MissingToken, download_model
from hidream_service.inference.manifest import MANIFEST_FILE, Manifest, ManifestMismatch, verify_directory
from hidream_service.inference.sources import UNPINNED, UnpinnedRevision, WeightSource
from hidream_service.inference.weights import WeightsLayout
from hidream_service.models import hidream_e1, hidream_i1, hidream_o1
from hidream_service.models.registry import DEFAULT_REGISTRY as registry

REVISION_A = "a" * 40
REVISION_B = "b" * 40


class FakeHub:
    """Writes a small diffusers-like tree for each fetch, its content depending on the revision."""

    def __init__(self) -> None:
        self.fetched: list[tuple[str, str]] = []

    def __call__(
        self, *, repo_id: str, revision: str, local_dir: Path, allow_patterns: list[str] | None, token: str | None
    ) -> Any:
        self.fetched.append((repo_id, revision))
        files = {"model_index.json": "{}", "config.json": "{}", f"weights-{revision[:4]}.safetensors": revision * 10}
        for name, text in files.items():
            (local_dir / name).write_text(text)
        (local_dir / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        (local_dir / ".cache" / "huggingface" / "metadata").write_text("hub bookkeeping")
        return str(local_dir)


def pin_all(monkeypatch: pytest.MonkeyPatch, revision: str) -> None:
    """Pretend this build pins `revision` for every source each family declares."""

    def pinned(source: WeightSource) -> WeightSource:
        return dataclasses.replace(source, revision=revision)

    for module in (hidream_i1, hidream_e1, hidream_o1):
        monkeypatch.setattr(module, "SOURCES", {key: pinned(source) for key, source in module.SOURCES.items()})
    llama = pinned(hidream_i1.LLAMA_3_1_8B_INSTRUCT)
    for module in (hidream_i1, hidream_e1):
        monkeypatch.setattr(module, "LLAMA_3_1_8B_INSTRUCT", llama)


def download(model: str, root: Path, **options: Any) -> list[Manifest]:
    return download_model(registry.sources_for(model), root, **options)


def test_every_revision_is_a_commit_sha_or_the_marked_placeholder() -> None:
    for source in registry.sources_for("all"):
        assert source.pinned or source.revision == UNPINNED, source.repo


def test_every_model_name_resolves_and_e1_is_included() -> None:
    assert {s.repo for s in registry.sources_for("hidream-e1-full")} >= {"HiDream-ai/HiDream-E1-Full"}
    assert {s.repo for s in registry.sources_for("hidream-e1-1")} >= {"HiDream-ai/HiDream-E1-1"}
    every = {source.repo for group in registry.downloads().values() for source in group}
    assert len(registry.sources_for("all")) == len(every) == 8
    with pytest.raises(ValueError, match="hidream-i1-full"):
        registry.sources_for("hidream-i2")


def test_an_unpinned_revision_is_refused_before_any_transfer(tmp_path: Path) -> None:
    hub = FakeHub()
    unpinned = WeightSource("HiDream-ai/HiDream-I1-Full", UNPINNED, "HiDream-I1-Full")
    with pytest.raises(UnpinnedRevision, match="40-character commit sha"):
        unpinned.require_pinned()
    if not hidream_i1.SOURCES["full"].pinned:
        with pytest.raises(UnpinnedRevision):
            download("hidream-i1-full", tmp_path, token="hf_x", fetch=hub)
    assert hub.fetched == []


def test_the_gated_llama_encoder_needs_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_all(monkeypatch, REVISION_A)
    hub = FakeHub()

    with pytest.raises(MissingToken, match="meta-llama/Llama-3.1-8B-Instruct"):
        download("hidream-i1-dev", tmp_path, token=None, fetch=hub)
    assert hub.fetched == []


def test_a_download_writes_a_manifest_and_commits_after_each_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_all(monkeypatch, REVISION_A)
    hub, saved = FakeHub(), []

    manifests = download("hidream-i1-full", tmp_path, token="hf_x", fetch=hub, on_saved=saved.append)

    assert hub.fetched == [("HiDream-ai/HiDream-I1-Full", REVISION_A), ("meta-llama/Llama-3.1-8B-Instruct", REVISION_A)]
    assert [source.repo for source in saved] == [repo for repo, _ in hub.fetched]
    manifest = json.loads((tmp_path / "HiDream-I1-Full" / MANIFEST_FILE).read_text())
    assert manifest["repo"] == "HiDream-ai/HiDream-I1-Full" and manifest["revision"] == REVISION_A
    assert [entry["path"] for entry in manifest["files"]] == [
        "config.json",
        "model_index.json",
        "weights-aaaa.safetensors",
    ]
    assert manifests[0].files[2].size == 400 and len(manifests[0].files[2].sha256) == 64


def test_a_second_download_of_the_same_revision_fetches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_all(monkeypatch, REVISION_A)
    download("hidream-i1-fast", tmp_path, token="hf_x", fetch=FakeHub())
    hub = FakeHub()

    download("hidream-i1-fast", tmp_path, token="hf_x", fetch=hub)

    assert hub.fetched == []


def test_a_new_pin_replaces_the_old_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_all(monkeypatch, REVISION_A)
    download("hidream-i1-fast", tmp_path, token="hf_x", fetch=FakeHub())
    pin_all(monkeypatch, REVISION_B)

    download("hidream-i1-fast", tmp_path, token="hf_x", fetch=FakeHub())

    assert not (tmp_path / "HiDream-I1-Fast" / "weights-aaaa.safetensors").exists()
    assert verify_directory(hidream_i1.SOURCES["fast"], tmp_path) is not None


def test_loading_refuses_weights_of_another_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_all(monkeypatch, REVISION_A)
    download("hidream-i1-dev", tmp_path, token="hf_x", fetch=FakeHub())
    registry.check_weights(WeightsLayout(tmp_path), "dev")  # matches: loads
    pin_all(monkeypatch, REVISION_B)  # the code moved on; the Volume did not

    with pytest.raises(
        ManifestMismatch, match=f"downloaded at revision {REVISION_A}, but this build pins {REVISION_B}"
    ):
        registry.check_weights(WeightsLayout(tmp_path), "dev")


def test_loading_refuses_missing_or_truncated_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_all(monkeypatch, REVISION_A)
    download("hidream-i1-dev", tmp_path, token="hf_x", fetch=FakeHub())
    (tmp_path / "HiDream-I1-Dev" / "weights-aaaa.safetensors").write_text("cut short")
    (tmp_path / "Llama-3.1-8B-Instruct" / "config.json").unlink()

    with pytest.raises(ManifestMismatch, match="weights-aaaa.safetensors has 9 bytes, the manifest says 400"):
        registry.check_weights(WeightsLayout(tmp_path), "dev")
    with pytest.raises(ManifestMismatch, match="config.json is missing"):
        verify_directory(hidream_i1.LLAMA_3_1_8B_INSTRUCT, tmp_path)


def test_a_full_check_finds_changed_bytes_of_the_same_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_all(monkeypatch, REVISION_A)
    download("hidream-i1-dev", tmp_path, token="hf_x", fetch=FakeHub())
    (tmp_path / "HiDream-I1-Dev" / "model_index.json").write_text("[]")

    assert verify_directory(hidream_i1.SOURCES["dev"], tmp_path) is not None  # sizes only: still matches
    with pytest.raises(ManifestMismatch, match="model_index.json does not have the sha256"):
        verify_directory(hidream_i1.SOURCES["dev"], tmp_path, hash_files=True)
