"""LoRA inputs at submit: each `loras[i].path` is fetched (or found in the LoRA cache), checked from
its safetensors header against the endpoint's transformer, stored by content in the LoRA cache, and
its digest written into the job's input (`sha256`). A bad file is answered at once (413, or 422
naming the field and the first key at fault) and never becomes a job; workers read the cache only.

Where a file comes from:

- an http(s) URL: the image inputs' download (image_fetch.py: the same SSRF guard, no redirects),
  capped by HIDREAM_MAX_LORA_BYTES and HIDREAM_LORA_FETCH_TIMEOUT_SECONDS. A URL seen before is not
  fetched again while its file is cached;
- the URL of a file uploaded here (fal storage, Replicate's /v1/files): read from storage;
- a Hugging Face repository, `owner/repo[/file.safetensors][@revision]`, where HIDREAM_LORA_HUB
  allows it (huggingface_hub, which finds its token in HF_TOKEN). Without a file, the repository's
  one .safetensors file.

As for images, what a private (loopback, LAN) address answered is never described: any fault of
such a file reads as `UNREACHABLE`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from hidream_service.api.image_fetch import ImageInputs
from hidream_service.config import Settings
from hidream_service.image_inputs import ImageInputError
from hidream_service.inference.lora_cache import LoraCache, digest_of
from hidream_service.inference.lora_checks import LoraFileError, TransformerShape, check_lora, read_header
from hidream_service.storage import OutputStorage, files_key

UNREACHABLE = (
    "could not download the LoRA: no usable LoRA came back from that URL (it could not be reached, did not "
    "answer in time, or did not answer with a LoRA safetensors file)"
)
SOURCES = (
    "a LoRA path is an http(s) URL of a .safetensors file, the URL of a file uploaded here, or a Hugging Face "
    "repository: owner/repo[/file.safetensors][@revision]"
)
# Hugging Face's rules for repository ids (letters, digits, `-_.`), a path in it, and a revision.
HUB_REFERENCE = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:/(?P<file>[^@\s]+))?(?:@(?P<revision>[\w./-]+))?$"
)


class LoraInputError(ImageInputError):
    """A LoRA input that cannot be used; `status` is the HTTP status to answer with."""


@dataclass(frozen=True)
class HubReference:
    repo: str
    file: str | None
    revision: str | None

    @property
    def source(self) -> str:
        """Its key in the cache's source index."""
        return f"hf:{self.repo}/{self.file or ''}@{self.revision or ''}"


def hub_reference(path: str) -> HubReference | None:
    """`owner/repo[/file][@revision]` as a reference, or None for anything else."""
    match = HUB_REFERENCE.match(path)
    if match is None or ".." in path:
        return None
    return HubReference(match["repo"], match["file"], match["revision"])


#: (reference, byte cap) -> the file's bytes: huggingface_hub here, a stand-in in tests.
HubFetch = Callable[[HubReference, int], bytes]
#: What fetches a file from its source: its bytes, and whether they came from a private address.
Fetch = Callable[[], Awaitable[tuple[bytes, bool]]]


@dataclass
class LoraInputs:
    download: ImageInputs  # the guarded download, with the LoRA's caps and words
    storage: OutputStorage
    cache: LoraCache
    hub_access: bool
    hub_fetch: HubFetch

    @classmethod
    def for_settings(
        cls, settings: Settings, image_inputs: ImageInputs, storage: OutputStorage, cache: LoraCache | None = None
    ) -> LoraInputs:
        download = dataclasses.replace(
            image_inputs,
            max_bytes=settings.max_lora_bytes,
            timeout=settings.lora_fetch_timeout_seconds,
            noun="LoRA",
            unreachable=UNREACHABLE,
        )
        if cache is None:
            cache = LoraCache(settings.lora_cache_path, settings.lora_cache_bytes)
        return cls(download, storage, cache, settings.lora_hub, hub_download)

    async def prepare(self, path: str, *, own_hosts: set[str], target: TransformerShape, pinned: str | None) -> str:
        """The digest of the checked file `path` names, stored in the cache."""
        if path.startswith(("http://", "https://")):
            key = files_key(path)
            if key is not None and urllib.parse.urlsplit(path).netloc in own_hosts:
                data = await asyncio.to_thread(self._uploaded, key)
                return await asyncio.to_thread(self._kept, data, None, target, pinned, False)
            return await self._from_source(path, target, pinned, lambda: self._downloaded(path))
        reference = hub_reference(path)
        if reference is None:
            raise LoraInputError(422, SOURCES)
        if not self.hub_access:
            raise LoraInputError(
                422,
                f"'{path}' names a Hugging Face repository, and this server has no hub access (HIDREAM_LORA_HUB): "
                "send an https URL of the .safetensors file, or upload it here",
            )
        return await self._from_source(reference.source, target, pinned, lambda: self._from_hub(reference))

    async def _from_source(self, source: str, target: TransformerShape, pinned: str | None, fetch: Fetch) -> str:
        known = await asyncio.to_thread(self.cache.digest_of_source, source)
        if known is not None and pinned in (None, known):
            await asyncio.to_thread(self._still_fits, known, target)
            return known
        data, private = await fetch()
        return await asyncio.to_thread(self._kept, data, source, target, pinned, private)

    async def _downloaded(self, url: str) -> tuple[bytes, bool]:
        try:
            return await self.download.download(url)
        except ImageInputError as exc:
            raise LoraInputError(exc.status, exc.message) from None

    async def _from_hub(self, reference: HubReference) -> tuple[bytes, bool]:
        try:
            # The hub client cannot be interrupted: past the deadline the thread is left to finish.
            async with asyncio.timeout(self.download.timeout):
                data = await asyncio.to_thread(self.hub_fetch, reference, self.download.max_bytes)
        except TimeoutError:
            raise LoraInputError(
                422, f"could not download the LoRA from the hub within {self.download.timeout:g} s"
            ) from None
        return data, False

    def _uploaded(self, key: str) -> bytes:
        stored = self.storage.lookup(key)
        if stored is None:
            raise LoraInputError(422, "no file was uploaded at that URL (it may have expired or never existed)")
        size = stored.stat().st_size if isinstance(stored, Path) else len(stored)
        if size > self.download.max_bytes:
            raise LoraInputError(413, f"the LoRA is larger than {self.download.max_bytes} bytes")
        return stored.read_bytes() if isinstance(stored, Path) else stored

    def _kept(
        self, data: bytes, source: str | None, target: TransformerShape, pinned: str | None, private: bool
    ) -> str:
        """Check, then store: its digest. Run in a thread (hashing a large file takes a while)."""
        try:
            check_lora(read_header(data), target)
        except LoraFileError as exc:
            raise LoraInputError(422, UNREACHABLE if private else str(exc)) from None
        digest = digest_of(data)
        if pinned is not None and digest != pinned:
            message = f"the file's SHA-256 is {digest}, not the sha256 given"
            raise LoraInputError(422, UNREACHABLE if private else message)
        return self.cache.store(data, source)

    def _still_fits(self, digest: str, target: TransformerShape) -> None:
        """A cached file was checked when it was stored, perhaps for another transformer."""
        from hidream_service.inference.lora_checks import read_header_of_file

        path = self.cache.find(digest)
        if path is None:  # removed in between: rare enough to ask for a retry
            raise LoraInputError(422, "the LoRA left the cache while this request was checked; send it again")
        try:
            check_lora(read_header_of_file(path), target)
        except LoraFileError as exc:
            raise LoraInputError(422, str(exc)) from None


def hub_download(reference: HubReference, max_bytes: int) -> bytes:
    """One file of a Hugging Face repository, through huggingface_hub (its token from HF_TOKEN)."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise LoraInputError(
            422, "this server has hub access on but no hub client: pip install 'hidream-service[download]'"
        ) from None
    api = HfApi()
    try:
        file = reference.file or _only_safetensors(api.list_repo_files(reference.repo, revision=reference.revision))
        if not file.endswith(".safetensors"):
            raise LoraInputError(422, f"'{file}' is not a .safetensors file; only safetensors files are loaded")
        found = api.get_paths_info(reference.repo, [file], revision=reference.revision)
        size = getattr(found[0], "size", None) if found else None
        if size is None:
            raise LoraInputError(422, f"{reference.repo} has no file '{file}'")
        if size > max_bytes:
            raise LoraInputError(413, f"the LoRA is larger than {max_bytes} bytes")
        with tempfile.TemporaryDirectory() as scratch:
            path = hf_hub_download(reference.repo, file, revision=reference.revision, local_dir=scratch)
            return Path(path).read_bytes()
    except LoraInputError:
        raise
    except Exception as exc:
        # Not found, gated, unreachable, an id it refuses: the hub client raises from its own HTTP
        # stack, not httpx's, and its answers are public, so each is reported as it reads.
        raise LoraInputError(422, f"could not download the LoRA from the hub: {exc}") from None


def _only_safetensors(files: list[str]) -> str:
    candidates = [name for name in files if name.endswith(".safetensors")]
    if len(candidates) != 1:
        found = ", ".join(candidates[:5]) or "none"
        raise LoraInputError(
            422, f"name the file (owner/repo/file.safetensors): the repository has {len(candidates)} ({found})"
        )
    return candidates[0]
