"""Adapter-store settings (environment variables), shared by the worker's settings and the adapter CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .refs import S3_BUCKET

GiB = 1024**3


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/inference-worker/<name>`` (``~/.cache`` without it): the project's caches (the adapter cache,
    built checkpoints, the offline demo)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inference-worker" / name


def _default_cache_dir() -> Path:
    return cache_dir("adapter-cache")


def default_demo_dir() -> Path:
    """INFERENCE_DEMO_DIR's default: where the offline demo (``checkpoints.demo``) keeps its model and store."""
    return cache_dir("demo")


def demo_store_dir(demo_dir: Path | None = None) -> Path:
    """The offline demo's adapter store inside its directory (by default INFERENCE_DEMO_DIR, the worker's setting, or
    its default): what ``make demo`` serves and the adapter CLI's ``--demo`` opens. It is defined here, below the demo
    builder (``checkpoints.demo``), so that the adapter CLI finds it without depending on ``checkpoints``."""
    if demo_dir is None:
        demo_dir = Path(os.environ.get("INFERENCE_DEMO_DIR") or default_demo_dir())
    return demo_dir / "adapters"


def _check_bucket(name: str) -> str:
    if not S3_BUCKET.fullmatch(name):
        raise ValueError(f"invalid S3 bucket name {name!r}")
    return name


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", case_sensitive=False)

    adapter_store_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("ADAPTER_STORE_DIR"),
        description="Local adapter store (one sub-directory per name), used when MINIO_ENDPOINT is not set. "
        "Default ./adapter_store (the demo uses its own).",
    )
    minio_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("MINIO_ENDPOINT"),
        description="host:port (or http(s)://host:port) of the S3/MinIO server; when set, the store is S3.",
    )
    minio_access_key: str | None = Field(None, validation_alias=AliasChoices("MINIO_ACCESS_KEY"),
                                         description="S3 access key.")
    minio_secret_key: SecretStr | None = Field(None, validation_alias=AliasChoices("MINIO_SECRET_KEY"),
                                               description="S3 secret key.")
    minio_bucket: str = Field("adapters", validation_alias=AliasChoices("MINIO_BUCKET"),
                              description="Bucket that holds adapters by name.")
    minio_secure: bool = Field(False, validation_alias=AliasChoices("MINIO_SECURE"),
                               description="Use HTTPS to reach the S3 server.")
    minio_region: str | None = Field(None, validation_alias=AliasChoices("MINIO_REGION"),
                                     description="S3 region (saves a bucket-location lookup).")
    minio_allowed_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("MINIO_ALLOWED_BUCKETS"),
        description="Buckets that s3://bucket/prefix references may name (comma-separated). Default: MINIO_BUCKET.",
    )
    adapter_cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        validation_alias=AliasChoices("ADAPTER_CACHE_DIR"),
        description="Verified local cache of adapters downloaded from S3.",
    )
    adapter_cache_max_bytes: int = Field(
        20 * GiB, ge=0, validation_alias=AliasChoices("ADAPTER_CACHE_MAX_BYTES"),
        description="Size bound of the cache; least recently used adapters are removed beyond it.",
    )
    store_timeout_s: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("STORE_TIMEOUT_S"),
        description="Connect and read timeout of one S3 request.",
    )
    store_retries: int = Field(
        2, ge=0, validation_alias=AliasChoices("STORE_RETRIES"),
        description="Retries of a failed S3 request (connection errors, 5xx), with backoff.",
    )

    @field_validator("minio_bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        return _check_bucket(value)

    @field_validator("minio_allowed_buckets", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [b.strip() for b in value.split(",") if b.strip()]
        return value

    @field_validator("minio_allowed_buckets")
    @classmethod
    def _bucket_names(cls, value: list[str]) -> list[str]:
        return [_check_bucket(b) for b in value]

    @field_validator("minio_endpoint", "minio_access_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def allowed_buckets(self) -> list[str]:
        return sorted(set(self.minio_allowed_buckets or [self.minio_bucket]) | {self.minio_bucket})

    def local_store_dir(self) -> Path:
        return self.adapter_store_dir if self.adapter_store_dir is not None else Path("adapter_store")
