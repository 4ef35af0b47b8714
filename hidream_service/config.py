"""Settings: one object built at start-up from HIDREAM_* environment variables and passed down.

Tests construct `Settings(...)` explicitly; nothing in the service reads the environment elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hidream_service.inference.memory_modes import MemoryMode

#: Svix's published schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_WEBHOOK_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class SettingsError(Exception):
    """A setting names something this server does not have (an endpoint to preload, say)."""


def default_data_dir() -> Path:
    """Per-user data directory: $XDG_DATA_HOME/hidream, else ~/.local/share/hidream."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hidream"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the service can be told. Each field is documented where it is defined."""

    model_config = SettingsConfigDict(env_prefix="HIDREAM_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="This node's own directory: the SQLite database (unless database_url is set), outputs (unless "
        "outputs_dir is set), tiny weights, the node's name and its server lock.",
    )
    database_url: str | None = Field(
        # Unset, DATABASE_URL: what hosted Postgres services and their integrations set.
        default_factory=lambda: os.environ.get("DATABASE_URL") or None,
        description="Where jobs, logs and webhooks are kept. Unset: SQLite in the data dir. postgresql://user:pass@"
        "host/db: Postgres, which several nodes (each with its own data dir) share as one service.",
    )
    outputs_dir: Path | None = Field(
        default=None,
        description="Where output images and uploads are kept. Unset: outputs/ in the data dir. Nodes that share a "
        "database must share this directory too (any shared mount).",
    )
    output_ttl_hours: float = Field(
        default=72.0,
        ge=0,
        description="Outputs and uploads older than this are removed (the jobs stay, and say so); 0 keeps them "
        "forever. 72 h outlasts the webhook retry schedule (about 28 h) with a weekend to spare.",
    )
    node_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,40}$",
        description="This node's name in leases and webhook claims. Unset: made once and kept in the data dir.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address the API binds to. Loopback by default; bind wider only with API keys set.",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port of the API (0 picks a free one).")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host names (any port) requests may name in their Host header, besides "
        "localhost, 127.0.0.1, [::1], the bind address and public_url's host. Empty: checked only on a loopback "
        "bind, where a web page could otherwise reach the API through DNS rebinding. '*': any host.",
    )
    request_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="`hidream serve`: a client has this long to send a request's line and headers once it has "
        "connected (or started its next request); slower ones are closed.",
    )
    request_body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait for the next part of a request body; a body that stalls longer is a 408 and "
        "the connection is closed.",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="`hidream serve`: open connections (streams and idle keep-alives included) past which new "
        "requests are answered 503.",
    )
    weights: str | None = Field(
        default=None,
        description="'tiny' for random-weight tiny models built offline, or a directory of real HiDream "
        "weights (layout in docs/weights.md). Unset: only hidream/noop is served.",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL clients reach the API at (for status/result/file URLs). Unset: taken from "
        "each request's Host header.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys. Empty: the API is open (and should stay on loopback).",
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys (each also in api_keys) that may run server-wide operations, "
        "such as rotating fal's signing key. Without API keys anyone may.",
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Pins the Standard Webhooks secrets (whsec_...): without API keys it is the secret; with keys, "
        "each key's own secret is derived from it. Unset: each key's (or the open server's) is generated and kept "
        "with the signing keys, and rotated over HTTP.",
    )
    workers: int = Field(default=1, ge=1, le=64, description="Worker processes (one per GPU).")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="How the server and its workers log to stderr: text lines, or one JSON object per line "
        "(time, level, logger, message, and a job's request_id, endpoint and dialect on the lines about it).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where workers run models: 'auto' takes CUDA when present."
    )
    memory_mode: MemoryMode = Field(
        default=MemoryMode.GPU,
        description="Where an I1 or E1 pipeline's components live: 'gpu' (all on the GPU, about 62 GiB), "
        "'encoders-offloaded' (the text encoders wait in CPU memory between requests, about 51 GiB), "
        "'model-offload' (each component comes to the GPU for its turn, about 36 GiB) or 'block-offload' "
        "(the same, the transformer one block at a time, about 19 GiB; slow). `hidream doctor` recommends one; "
        "docs/weights.md has the arithmetic. O1 stays whole on the GPU.",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A worker's claim on a job; a job whose lease expires (worker gone) is re-queued.",
    )
    heartbeat_seconds: float = Field(
        default=0.25,
        gt=0,
        description="How often a busy worker renews its lease, flushes logs and checks for a cancel.",
    )
    preview_every_steps: int = Field(
        default=4,
        ge=0,
        description="A live preview of the forming image every this many denoising steps (0: none):"
        " what streams, the playground and OpenAI's partial images show.",
    )
    max_job_attempts: int = Field(
        default=3, ge=1, description="Runs of one job before a crashing job is failed instead of re-queued."
    )
    webhook_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Timeout of one webhook POST (connect + send + response)."
    )
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_SCHEDULE),
        description="Comma-separated seconds to wait before each delivery attempt; the first is usually 0.",
    )
    webhook_throttle_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Least wait before retrying a receiver that answered 429 or timed out.",
    )
    webhook_rotation_grace_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="How long the previous webhook secret keeps signing beside a newly rotated one.",
    )
    allow_private_urls: bool | None = Field(
        default=None,
        description="Let webhook and image-input URLs reach loopback and private addresses (never link-local "
        "or cloud metadata). Unset: allowed only for an open API (no api_keys) bound to loopback, where the "
        "caller is the operator; with keys, callers are tenants and must not reach the operator's network.",
    )
    webhook_max_concurrency: int = Field(
        default=16, ge=1, le=1000, description="Webhook POSTs in flight at once from the delivery loop."
    )
    webhook_max_per_host: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Webhook POSTs in flight at once to one host and port, so that a slow receiver holds a few "
        "of the delivery loop's slots and never all of them.",
    )
    sync_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long synchronous calls (OpenAI Images, fal run, WaveSpeed sync mode) wait for a job.",
    )
    max_queued_per_key: int = Field(
        default=100,
        ge=0,
        description="Most jobs one API key may have queued (not yet running); one more is a 429 with "
        "Retry-After. 0: no limit.",
    )
    max_upload_bytes: int = Field(
        default=50 << 20, gt=0, description="Largest file accepted by the upload endpoints (fal storage, /v1/files)."
    )
    max_image_bytes: int = Field(
        default=20 << 20, gt=0, description="Largest image input (downloaded, data URI or uploaded); more is a 413."
    )
    max_image_pixels: int = Field(
        default=4096 * 4096, gt=0, description="Most pixels an image input may have (from its header); more is a 413."
    )
    max_image_decoded_bytes: int = Field(
        default=4096 * 4096 * 4,
        gt=0,
        description="Most bytes an image input may take decoded, read from its header before decoding: pixels x "
        "channels x bytes a channel (a 16-bit RGBA PNG counts 8 bytes a pixel); more is a 413.",
    )
    max_concurrent_decodes: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Image inputs decoded at once by the API; more wait their turn. With the decoded-size "
        "limit, this bounds the memory decoding takes (up to about 200 MB per 16-megapixel decode).",
    )
    image_fetch_timeout_seconds: float = Field(
        default=20.0, gt=0, description="Time limit for downloading one image input from its URL."
    )
    max_lora_bytes: int = Field(
        default=1 << 30,
        gt=0,
        description="Largest LoRA file a request may name (downloaded, uploaded or from the hub); more is a 413. "
        "The API holds a file in memory while it checks it.",
    )
    lora_fetch_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Time limit for downloading one LoRA file at submit."
    )
    lora_cache_dir: Path | None = Field(
        default=None,
        description="Where LoRA files are kept, by content, for the workers to load: the API and every worker "
        "must see the same directory (with several nodes, a shared mount such as one beside the outputs). "
        "Unset: loras/ in the data dir. Not read on Modal, whose LoRA cache is the hidream-loras Volume.",
    )
    lora_cache_bytes: int = Field(
        default=20 << 30,
        gt=0,
        description="Bytes of LoRA files kept; past it the least recently used files are removed (and fetched "
        "again when named again).",
    )
    max_loaded_loras: int = Field(
        default=4,
        ge=3,
        description="LoRA adapters a worker keeps loaded in each pipeline (at least one request's three); the "
        "least recently used is unloaded first.",
    )
    lora_hub: bool = Field(
        default=False,
        description="Let `loras` name Hugging Face repositories (owner/repo[/file][@revision]), downloaded by the "
        "API with huggingface_hub (the `download` extra; HF_TOKEN for private ones). Off: such a path is a 422.",
    )
    nsfw_threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="open_nsfw score at or above which the safety checker replaces an output with a black image.",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="Commits of jobs and their webhooks: FULL survives power loss; NORMAL survives process crashes "
        "only and commits faster. (Webhook claims and attempt records are always NORMAL: losing one means a resend.)",
    )
    batch_max_size: int = Field(
        default=4,
        ge=1,
        le=32,
        description="Most compatible queued jobs (same endpoint, size, steps, guidance) a worker runs as one "
        "pipeline call; 1 turns batching off.",
    )
    batch_wait_seconds: float = Field(
        default=0.0,
        ge=0.0,
        le=10.0,
        description="How long a worker waits for compatible jobs to fill a batch; 0 batches only jobs already queued.",
    )
    models: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Comma-separated models whose endpoints this server answers (full, dev, fast, e1-full, e1-1, o1,"
        " o1-dev), whatever this machine's weights directory holds: for an API in front of GPU containers that"
        " load them (Modal). Unset: the models the weights directory holds.",
    )
    preload: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated endpoint ids whose models each worker loads at start, before its first job.",
    )
    max_loaded_pipelines: int = Field(
        default=1,
        ge=1,
        description="Pipelines a worker keeps loaded. One real HiDream-I1 pipeline fills an 80 GB GPU.",
    )

    @field_validator("api_keys", "admin_keys", "preload", "models", "allowed_hosts", mode="before")
    @classmethod
    def _parse_lists(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("postgres://"):  # the short form many hosts hand out
            value = "postgresql://" + value.removeprefix("postgres://")
        if not value.startswith(("postgresql://", "postgresql+psycopg://", "sqlite:///")):
            raise ValueError("must be a postgresql://user:password@host/database URL (or sqlite:///path)")
        return value

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        parsed = _split_commas(value)
        if isinstance(parsed, list) and not parsed:
            raise ValueError("the retry schedule needs at least one delay")
        return parsed

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must be >= 0 seconds")
        return value

    @model_validator(mode="after")
    def _admin_keys_are_api_keys(self) -> Settings:
        if set(self.admin_keys) - set(self.api_keys):
            raise ValueError("every admin key must also be one of the API keys (HIDREAM_API_KEYS)")
        return self

    @model_validator(mode="after")
    def _one_lora_fits_the_cache(self) -> Settings:
        if self.max_lora_bytes > self.lora_cache_bytes:
            raise ValueError("max_lora_bytes must not exceed lora_cache_bytes")
        return self

    @model_validator(mode="after")
    def _batch_wait_within_lease(self) -> Settings:
        # A worker holds its first job's lease while it waits for batch mates, without renewing it.
        if self.batch_wait_seconds >= self.lease_seconds / 3:
            raise ValueError("batch_wait_seconds must be under a third of lease_seconds")
        return self

    @property
    def private_urls_allowed(self) -> bool:
        if self.allow_private_urls is not None:
            return self.allow_private_urls
        return self.host in LOOPBACK_HOSTS and not self.api_keys

    @property
    def database_path(self) -> Path:
        return self.data_dir / "hidream.sqlite3"

    @property
    def lora_cache_path(self) -> Path:
        return self.lora_cache_dir if self.lora_cache_dir is not None else self.data_dir / "loras"

    @property
    def outputs_path(self) -> Path:
        return self.outputs_dir if self.outputs_dir is not None else self.data_dir / "outputs"

    @property
    def shared_database(self) -> bool:
        """Whether other nodes may use the same database (Postgres) or only this one (SQLite in the data dir)."""
        return self.database_url is not None and not self.database_url.startswith("sqlite")

    @property
    def sql_url(self) -> str:
        return self.database_url or f"sqlite:///{self.database_path}"
