"""Weights at locked revisions: a download resolves an unpinned repository's commit once and locks
it, an explicit pin wins over the lock, and loading and `hidream weights verify` refuse what does not
match the lock file. The hub is replaced by a fake `fetch` and a fake revision resolver."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from hidream_service.cli import main
from hidream_service.inference.download import (
    HubClientMissing,
    MissingToken,
    RevisionPinError,
    download_model,
    hub_fetch,
)
from hidream_service.inference.lock import LOCK_FILE, LockedRepository
from hidream_service.inference.manifest import ManifestMismatch, downloaded_models, verify_weights
from hidream_service.inference.weights import WeightsLayout
from hidream_service.models import hidream_e1, hidream_i1, hidream_o1
from hidream_service.models.registry import DEFAULT_REGISTRY as registry

REVISION_A = "a" * 40
REVISION_B = "b" * 40
I1_FULL = "HiDream-ai/HiDream-I1-Full"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


class FakeHub:
    """Writes a small diffusers-like tree for each fetch, its content depending on the revision."""

    def __init__(self) -> None:
        self.fetched: list[tuple[str, str]] = []
        self.patterns: dict[str, list[str] | None] = {}

    def __call__(
        self, *, repo_id: str, revision: str, local_dir: Path, allow_patterns: list[str] | None, token: str | None
    ) -> Any:
        self.fetched.append((repo_id, revision))
        self.patterns[repo_id] = allow_patterns
        files = {"model_index.json": "{}", "config.json": "{}", f"weights-{revision[:4]}.safetensors": revision * 10}
        for name, text in files.items():
            (local_dir / name).write_text(text)
        (local_dir / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        (local_dir / ".cache" / "huggingface" / "metadata").write_text("hub bookkeeping")
        return str(local_dir)


class FakeResolver:
    """The hub's answer to "which commit is this repository at now?"."""

    def __init__(self, revision: str = REVISION_A) -> None:
        self.revision = revision
        self.asked: list[str] = []

    def __call__(self, repo: str, token: str | None) -> str:
        self.asked.append(repo)
        return self.revision


def download(model: str, root: Path, **options: Any) -> list[LockedRepository]:
    options = {"token": "hf_x", "fetch": FakeHub(), "resolve_revision": FakeResolver(), **options}
    return download_model(registry.sources_for(model), root, **options)


def locked_revisions(root: Path) -> dict[str, str]:
    lock = json.loads((root / LOCK_FILE).read_text())
    return {entry["repo"]: entry["revision"] for entry in lock["repositories"]}


def pin_i1_in_code(monkeypatch: pytest.MonkeyPatch, revision: str) -> None:
    pinned = {key: dataclasses.replace(source, revision=revision) for key, source in hidream_i1.SOURCES.items()}
    monkeypatch.setattr(hidream_i1, "SOURCES", pinned)


def test_the_llama_encoder_is_pinned_to_its_public_revision_and_hidream_i1_and_e1_are_resolved() -> None:
    assert hidream_i1.LLAMA_3_1_8B_INSTRUCT.revision == "0e9e39f249a16976918f6564b8830bc894c89659"
    assert {source.revision for source in hidream_o1.SOURCES.values()} == {
        "0b0901d99f200389e138c61946af1185f5f49a13",
        "c0bada0e15c54a9f96a6d1ecc35575b32bc21544",
    }
    assert all(source.revision is None for source in [*hidream_i1.SOURCES.values(), *hidream_e1.SOURCES.values()])
    with pytest.raises(ValueError, match="40-character commit sha"):
        dataclasses.replace(hidream_i1.SOURCES["full"], revision="main")


def test_every_model_name_resolves_and_e1_is_included() -> None:
    assert {s.repo for s in registry.sources_for("hidream-e1-full")} >= {"HiDream-ai/HiDream-E1-Full"}
    assert {s.repo for s in registry.sources_for("hidream-e1-1")} >= {"HiDream-ai/HiDream-E1-1"}
    every = {source.repo for group in registry.downloads().values() for source in group}
    assert len(registry.sources_for("all")) == len(every) == 8
    with pytest.raises(ValueError, match="hidream-i1-full"):
        registry.sources_for("hidream-i2")


def test_only_the_files_the_loaders_use_are_requested() -> None:
    patterns = {source.repo: source.allow_patterns for source in registry.sources_for("all")}

    assert patterns["HiDream-ai/HiDream-E1-Full"] == ("HiDream-E1-Full.safetensors",)
    assert patterns["HiDream-ai/HiDream-E1-1"] == ("transformer/*",)
    llama = patterns[LLAMA] or ()
    wanted = ["config.json", "model-00001-of-00004.safetensors", "model.safetensors.index.json", "tokenizer.json"]
    unwanted = ["original/consolidated.00.pth", "original/params.json", "original/tokenizer.model", "README.md"]
    assert all(any(fnmatchcase(name, pattern) for pattern in llama) for name in wanted)
    assert not any(fnmatchcase(name, pattern) for name in unwanted for pattern in llama)
    i1 = patterns[I1_FULL] or ()
    assert any(fnmatchcase("text_encoder_3/model-00001-of-00002.safetensors", pattern) for pattern in i1)
    assert not any(fnmatchcase("assets/demo.jpg", pattern) for pattern in i1)


def test_the_download_asks_the_hub_for_those_patterns_only(tmp_path: Path) -> None:
    hub = FakeHub()

    download("hidream-e1-1", tmp_path, fetch=hub)

    assert hub.patterns["HiDream-ai/HiDream-E1-1"] == ["transformer/*"]


def test_the_gated_llama_encoder_needs_a_token(tmp_path: Path) -> None:
    hub, resolver = FakeHub(), FakeResolver()

    with pytest.raises(MissingToken, match=LLAMA):
        download("hidream-i1-dev", tmp_path, token=None, fetch=hub, resolve_revision=resolver)
    assert hub.fetched == [] and resolver.asked == []


def test_an_unpinned_repository_is_resolved_once_then_its_locked_revision_is_used(tmp_path: Path) -> None:
    hub, resolver = FakeHub(), FakeResolver(REVISION_A)

    download("hidream-i1-full", tmp_path, fetch=hub, resolve_revision=resolver)

    assert resolver.asked == [I1_FULL]  # the Llama encoder is pinned in code
    assert hub.fetched == [(I1_FULL, REVISION_A), (LLAMA, hidream_i1.LLAMA_3_1_8B_INSTRUCT_REVISION)]
    assert locked_revisions(tmp_path)[I1_FULL] == REVISION_A

    shutil.rmtree(tmp_path / "HiDream-I1-Full")  # lost: the next download fetches it again
    hub, resolver = FakeHub(), FakeResolver(REVISION_B)  # the repository has moved on since
    download("hidream-i1-full", tmp_path, fetch=hub, resolve_revision=resolver)

    assert resolver.asked == []
    assert hub.fetched == [(I1_FULL, REVISION_A)]  # Llama is complete: not fetched again


def test_the_lock_file_records_every_files_size_and_sha256(tmp_path: Path) -> None:
    download("hidream-i1-fast", tmp_path)

    lock = json.loads((tmp_path / LOCK_FILE).read_text())
    fast = next(entry for entry in lock["repositories"] if entry["repo"] == "HiDream-ai/HiDream-I1-Fast")
    assert fast["directory"] == "HiDream-I1-Fast" and fast["revision"] == REVISION_A
    assert [entry["path"] for entry in fast["files"]] == ["config.json", "model_index.json", "weights-aaaa.safetensors"]
    weights = (tmp_path / "HiDream-I1-Fast" / "weights-aaaa.safetensors").read_bytes()
    assert fast["files"][2] == {
        "path": "weights-aaaa.safetensors",
        "size": 400,
        "sha256": hashlib.sha256(weights).hexdigest(),
    }


def test_a_pin_in_code_wins_over_the_lock_and_loading_refuses_the_old_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download("hidream-i1-dev", tmp_path)
    registry.check_weights(WeightsLayout(tmp_path), "dev")  # matches: loads
    pin_i1_in_code(monkeypatch, REVISION_B)  # the code moved on; the weights did not

    with pytest.raises(ManifestMismatch, match=f"locked at revision {REVISION_A}, but this build pins {REVISION_B}"):
        registry.check_weights(WeightsLayout(tmp_path), "dev")

    hub = FakeHub()
    download("hidream-i1-dev", tmp_path, fetch=hub)
    assert hub.fetched == [("HiDream-ai/HiDream-I1-Dev", REVISION_B)]
    assert not (tmp_path / "HiDream-I1-Dev" / "weights-aaaa.safetensors").exists()
    registry.check_weights(WeightsLayout(tmp_path), "dev")


def test_a_pin_given_for_the_download_wins_over_the_lock(tmp_path: Path) -> None:
    download("hidream-i1-fast", tmp_path)
    hub, resolver = FakeHub(), FakeResolver()

    download(
        "hidream-i1-fast",
        tmp_path,
        fetch=hub,
        resolve_revision=resolver,
        revisions={"HiDream-ai/HiDream-I1-Fast": REVISION_B},
    )

    assert hub.fetched == [("HiDream-ai/HiDream-I1-Fast", REVISION_B)] and resolver.asked == []
    assert locked_revisions(tmp_path)["HiDream-ai/HiDream-I1-Fast"] == REVISION_B


def test_a_pin_that_contradicts_the_code_or_is_no_commit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RevisionPinError, match="pinned to 0e9e39f2"):
        download("hidream-i1-fast", tmp_path, revisions={LLAMA: REVISION_B})
    with pytest.raises(RevisionPinError, match="40-character commit sha"):
        download("hidream-i1-fast", tmp_path, revisions={"HiDream-ai/HiDream-I1-Fast": "main"})
    assert not (tmp_path / LOCK_FILE).exists()
    assert main(["weights", "download", "hidream-i1-fast", "--to", str(tmp_path), "--revision", "main"]) == 2
    assert main(["weights", "download", "hidream-i2", "--to", str(tmp_path)]) == 2


def test_a_hand_edited_lock_file_wins(tmp_path: Path) -> None:
    download("hidream-i1-dev", tmp_path)
    lock_path = tmp_path / LOCK_FILE
    lock_path.write_text(lock_path.read_text().replace(REVISION_A, REVISION_B))

    with pytest.raises(ManifestMismatch, match=f"holds revision {REVISION_A}, but the lock file pins {REVISION_B}"):
        registry.check_weights(WeightsLayout(tmp_path), "dev")

    hub, resolver = FakeHub(), FakeResolver()
    download("hidream-i1-dev", tmp_path, fetch=hub, resolve_revision=resolver)
    assert hub.fetched == [("HiDream-ai/HiDream-I1-Dev", REVISION_B)] and resolver.asked == []
    registry.check_weights(WeightsLayout(tmp_path), "dev")


def test_loading_refuses_missing_or_truncated_files(tmp_path: Path) -> None:
    download("hidream-i1-dev", tmp_path)
    (tmp_path / "HiDream-I1-Dev" / "weights-aaaa.safetensors").write_text("cut short")

    with pytest.raises(ManifestMismatch, match="weights-aaaa.safetensors has 9 bytes, the lock file says 400"):
        registry.check_weights(WeightsLayout(tmp_path), "dev")


def test_only_models_downloaded_in_full_are_listed(tmp_path: Path) -> None:
    download("hidream-e1-full", tmp_path)

    assert downloaded_models(tmp_path, registry) == ["full", "e1-full"]
    (tmp_path / "HiDream-E1-Full" / "weights-aaaa.safetensors").unlink()
    assert downloaded_models(tmp_path, registry) == ["full"]


def test_verify_finds_changed_bytes_and_missing_repositories_and_the_cli_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    download("hidream-i1-dev", tmp_path)
    assert verify_weights(tmp_path) == []
    assert main(["weights", "verify", str(tmp_path)]) == 0

    (tmp_path / "HiDream-I1-Dev" / "model_index.json").write_text("[]")  # same size, other bytes
    shutil.rmtree(tmp_path / "Llama-3.1-8B-Instruct")
    capsys.readouterr()

    assert main(["weights", "verify", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "HiDream-ai/HiDream-I1-Dev: model_index.json does not have the sha256 the lock file records" in printed
    assert f"{LLAMA}: {tmp_path / 'Llama-3.1-8B-Instruct'} is missing" in printed
    assert main(["weights", "verify", str(tmp_path / "elsewhere")]) == 1


def test_without_huggingface_hub_the_download_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)

    with pytest.raises(HubClientMissing, match=r"hidream-service\[download\]"):
        hub_fetch()
