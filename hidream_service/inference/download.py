"""Download weights into the docs/weights.md layout, each repository at one locked commit.

The commit of a repository is, first that wins: the one its family pins in code, one pinned for
this download (`revisions`; `hidream weights download --revision REPO=SHA`), the one the weights
root's lock file records (lock.py; perhaps edited by hand), else the repository's current commit,
resolved once. The plan is written to the lock file before any transfer, so an interrupted download
resumes at the same commit; each repository's files and their sha256s are written when it is done.

Run by `hidream weights download` into a local directory and by the Modal download function into
the weights Volume. The hub client is passed in (`fetch`, `resolve_revision`), so everything but
the transfer runs offline in the tests; huggingface_hub is imported only when they are not.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from hidream_service.inference.lock import (
    DownloadRecord,
    LockedRepository,
    hash_files,
    lock_repositories,
    read_lock,
    read_record,
    write_record,
)
from hidream_service.inference.manifest import file_problems
from hidream_service.inference.sources import WeightSource, is_commit_sha

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'hidream-service[download]' (or just huggingface-hub)"


class MissingToken(Exception):
    """A gated repository needs a Hugging Face token that was granted access."""


class RevisionPinError(Exception):
    """A revision pinned for a download cannot be used; the message says why."""


class HubClientMissing(Exception):
    """huggingface_hub is not installed here; the message says how to install it."""


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


#: (repository, token) -> the commit sha its default branch is at now.
ResolveRevision = Callable[[str, str | None], str]


def hub_fetch() -> Fetch:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise _hub_missing() from None
    fetch: Fetch = snapshot_download  # shows the hub's own progress bars
    return fetch


def hub_revision_resolver() -> ResolveRevision:
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise _hub_missing() from None
    api = HfApi()

    def resolve(repo: str, token: str | None) -> str:
        return api.model_info(repo, token=token).sha or ""

    return resolve


def _hub_missing() -> HubClientMissing:
    return HubClientMissing(f"downloading needs huggingface_hub, which is not installed: {INSTALL_HINT}")


def download_model(
    sources: tuple[WeightSource, ...],
    root: Path,
    *,
    token: str | None,
    revisions: Mapping[str, str] | None = None,
    fetch: Fetch | None = None,
    resolve_revision: ResolveRevision | None = None,
    on_saved: Callable[[WeightSource], None] = lambda source: None,
) -> list[LockedRepository]:
    """Fetch `sources` (a model's, from its family: `Registry.sources_for`) under `root`, lock them
    in `root`'s lock file and return their entries. `revisions` pins commits by repository for this
    download.

    Refuses, before any transfer, a gated source without a token and a pin that cannot be used. A
    folder already complete at its revision is skipped; one holding another revision is replaced;
    an interrupted download of the same revision is resumed.
    """
    revisions = dict(revisions or {})
    _check_pins(sources, revisions)
    for source in sources:
        if source.gated and not token:
            raise MissingToken(
                f"{source.repo} is gated: accept its licence on Hugging Face and provide HF_TOKEN "
                "(on Modal, in the huggingface-secret Secret)"
            )
    fetch = fetch or hub_fetch()
    root.mkdir(parents=True, exist_ok=True)
    planned = _plan(sources, root, revisions, token, resolve_revision)
    entries = []
    for source in sources:
        entries.append(_download_source(source, planned[source.repo], root, token, fetch))
        on_saved(source)  # on Modal: commit the Volume, so a later failure keeps what is done
    return entries


def _check_pins(sources: tuple[WeightSource, ...], revisions: Mapping[str, str]) -> None:
    by_repo = {source.repo: source for source in sources}
    for repo, revision in revisions.items():
        if repo not in by_repo:
            raise RevisionPinError(f"{repo} is not one of the repositories downloaded: {', '.join(by_repo)}")
        if not is_commit_sha(revision):
            raise RevisionPinError(f"the revision of {repo} must be a 40-character commit sha, not {revision!r}")
        pinned_in_code = by_repo[repo].revision
        if pinned_in_code is not None and pinned_in_code != revision:
            raise RevisionPinError(
                f"{repo} is pinned to {pinned_in_code} in code; a download at {revision} would not load"
            )


def _plan(
    sources: tuple[WeightSource, ...],
    root: Path,
    revisions: Mapping[str, str],
    token: str | None,
    resolve_revision: ResolveRevision | None,
) -> dict[str, str]:
    """The commit of each source by repository, written to the lock file where it changes."""
    locked = read_lock(root)
    planned: dict[str, str] = {}
    for source in sources:
        pinned = source.revision or revisions.get(source.repo)
        if pinned is None and source.repo in locked:
            pinned = locked[source.repo].revision
        planned[source.repo] = pinned or _resolve(source.repo, token, resolve_revision or hub_revision_resolver())
    changed = [
        LockedRepository(source.repo, planned[source.repo], source.directory)
        for source in sources
        if source.repo not in locked or locked[source.repo].revision != planned[source.repo]
    ]
    if changed:
        lock_repositories(root, changed)
    return planned


def _resolve(repo: str, token: str | None, resolve_revision: ResolveRevision) -> str:
    revision = resolve_revision(repo, token)
    if not is_commit_sha(revision):
        raise RevisionPinError(f"the hub gave {revision!r} as the current commit of {repo}")
    log.info("%s is at %s now: locking that revision", repo, revision)
    return revision


def _download_source(
    source: WeightSource, revision: str, root: Path, token: str | None, fetch: Fetch
) -> LockedRepository:
    directory = root / source.directory
    locked = read_lock(root)[source.repo]
    record = read_record(directory)
    finished = record == DownloadRecord(source.repo, revision, complete=True)
    if finished and locked.files is not None and not file_problems(directory, locked.files):
        log.info("%s is already at %s in %s", source.repo, revision, directory)
        return locked
    holds_revision = record is not None and (record.repo, record.revision) == (source.repo, revision)
    if directory.exists() and not holds_revision:
        log.info("replacing %s: it does not hold %s at %s", directory, source.repo, revision)
        shutil.rmtree(directory)  # files of another revision must not end up in the lock file
    directory.mkdir(parents=True, exist_ok=True)
    write_record(directory, DownloadRecord(source.repo, revision, complete=False))
    log.info("downloading %s at %s into %s", source.repo, revision, directory)
    fetch(
        repo_id=source.repo,
        revision=revision,
        local_dir=directory,
        allow_patterns=None if source.allow_patterns is None else list(source.allow_patterns),
        token=token,
    )
    log.info("hashing the files of %s", source.repo)
    entry = LockedRepository(source.repo, revision, source.directory, hash_files(directory))
    lock_repositories(root, [entry])
    write_record(directory, DownloadRecord(source.repo, revision, complete=True))
    log.info("%s", entry.describe())
    return entry
