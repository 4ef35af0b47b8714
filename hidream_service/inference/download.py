"""Download weights at pinned revisions into the docs/weights.md layout, each with its manifest.

Run on Modal by `modal run modal_app.py::download_weights --model NAME` into the weights Volume;
the same function fills a local directory for `hidream serve --weights DIR`. The hub client is
passed in (`fetch`), so everything but the transfer itself runs offline in the tests.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from hidream_service.inference.manifest import Manifest, build_manifest, problems, read_manifest, write_manifest
from hidream_service.inference.sources import WeightSource

log = logging.getLogger(__name__)

IN_PROGRESS_MARKER = ".hidream_download.json"


class MissingToken(Exception):
    """A gated repository needs a Hugging Face token that was granted access."""


class Fetch(Protocol):
    """The part of `huggingface_hub.snapshot_download` used here."""

    def __call__(
        self,
        *,
        repo_id: str,
        revision: str,
        local_dir: Path,
        allow_patterns: list[str] | None,
        token: str | None,
    ) -> Any: ...


def hub_fetch() -> Fetch:
    from huggingface_hub import snapshot_download

    fetch: Fetch = snapshot_download
    return fetch


def download_model(
    sources: tuple[WeightSource, ...],
    root: Path,
    *,
    token: str | None,
    fetch: Fetch | None = None,
    on_saved: Callable[[WeightSource], None] = lambda source: None,
) -> list[Manifest]:
    """Fetch `sources` (a model's, from its family: `Registry.sources_for`) under `root`; returns
    their manifests.

    Refuses, before any transfer, a source without a pinned revision and a gated one without a
    token. A directory already complete at the pinned revision is skipped; one holding another
    revision is replaced; an interrupted download of the same revision is resumed.
    """
    for source in sources:
        source.require_pinned()
        if source.gated and not token:
            raise MissingToken(
                f"{source.repo} is gated: accept its licence on Hugging Face and provide HF_TOKEN "
                "(on Modal, in the huggingface-secret Secret)"
            )
    manifests = []
    for source in sources:
        manifests.append(_download_source(source, root / source.directory, token, fetch or hub_fetch()))
        on_saved(source)  # on Modal: commit the Volume, so a later failure keeps what is done
    return manifests


def _download_source(source: WeightSource, directory: Path, token: str | None, fetch: Fetch) -> Manifest:
    existing = read_manifest(directory)
    if existing is not None and not problems(directory, existing, source):
        log.info("%s is already at %s in %s", source.repo, source.revision, directory)
        return existing
    marker = directory / IN_PROGRESS_MARKER
    resuming = marker.is_file() and json.loads(marker.read_text()).get("revision") == source.revision
    if directory.exists() and not resuming:
        log.info("replacing %s: it does not hold %s at %s", directory, source.repo, source.revision)
        shutil.rmtree(directory)  # files of another revision must not end up in this manifest
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"repo": source.repo, "revision": source.revision}))
    log.info("downloading %s at %s into %s", source.repo, source.revision, directory)
    fetch(
        repo_id=source.repo,
        revision=source.revision,
        local_dir=directory,
        allow_patterns=None if source.allow_patterns is None else list(source.allow_patterns),
        token=token,
    )
    manifest = build_manifest(directory, source.repo, source.revision)
    write_manifest(directory, manifest)
    marker.unlink()
    log.info("%s: %d files, %.1f GB", source.repo, len(manifest.files), manifest.total_bytes / 1e9)
    return manifest
