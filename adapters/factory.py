"""Pick the adapter store from the settings: S3/MinIO when MINIO_ENDPOINT is set, else the local directory."""

from __future__ import annotations

from pathlib import Path

from .config import StoreSettings
from .store import AdapterStore


def open_stores(
    settings: StoreSettings, local_dir: Path | None = None
) -> tuple[AdapterStore, dict[str, AdapterStore] | None]:
    """The store adapter names resolve in, and the stores s3:// references may use (None: S3 not configured)."""
    if not settings.minio_endpoint:
        from .local import LocalDirectoryStore

        return LocalDirectoryStore(local_dir if local_dir is not None else settings.local_store_dir()), None
    from .cache import VerifiedCache
    from .s3 import S3Store, make_client

    secret = settings.minio_secret_key.get_secret_value() if settings.minio_secret_key else None
    client = make_client(settings.minio_endpoint, settings.minio_access_key, secret, secure=settings.minio_secure,
                         region=settings.minio_region, timeout_s=settings.store_timeout_s,
                         retries=settings.store_retries)
    cache = VerifiedCache(settings.adapter_cache_dir, settings.adapter_cache_max_bytes)
    stores: dict[str, AdapterStore] = {
        bucket: S3Store(client, bucket, cache, endpoint=settings.minio_endpoint) for bucket in settings.allowed_buckets
    }
    return stores[settings.minio_bucket], stores
