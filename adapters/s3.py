"""The S3/MinIO adapter store (the ``minio`` SDK), selected when ``MINIO_ENDPOINT`` is set.

Layout: one prefix per adapter, ``<name>/adapter_config.json``, ``<name>/adapter_model.safetensors`` (and optional
tokenizer/processor files), and ``<name>/manifest.json``, written last: an adapter without a manifest is not
published. Downloads go through the :class:`~adapters.cache.VerifiedCache`. Every failure to reach or use the
server becomes ``store_unavailable`` (retryable for network faults and 5xx, not for bad credentials or a missing
bucket); requests are bounded by a timeout and a few retries with backoff.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from wire.errors import AdapterConflict, AdapterInvalid, AdapterNotFound, StoreUnavailable

from .cache import VerifiedCache
from .manifest import MANIFEST_FILE, FileEntry, Manifest, adapter_files, build_manifest, hash_file
from .refs import check_name
from .store import AdapterStore, FetchedAdapter, Progress
from .validate import inspect_adapter

log = logging.getLogger(__name__)
T = TypeVar("T")
_CREDENTIAL_ERRORS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                      "ExpiredToken", "AuthorizationHeaderMalformed"}
CHUNK = 1024 * 1024


def make_client(endpoint: str, access_key: str | None, secret_key: str | None, *, secure: bool = False,
                region: str | None = None, timeout_s: float = 10.0, retries: int = 2) -> Minio:
    """A MinIO client with bounded timeouts and retries (connection errors and 5xx, with backoff)."""
    if endpoint.startswith(("http://", "https://")):
        secure = endpoint.startswith("https://")
        endpoint = endpoint.split("://", 1)[1]
    endpoint = endpoint.rstrip("/")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        retries=urllib3.Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=0.2,
                              status_forcelist=(500, 502, 503, 504), raise_on_status=False),
        maxsize=16,
    )
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                 http_client=http)


class _Upload(io.RawIOBase):
    """A file reader that reports progress as the SDK reads it."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self.f = f
        self.on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if data:
            self.on_bytes(len(data))
        return data


class S3Store(AdapterStore):
    kind = "s3"

    def __init__(self, client: Minio, bucket: str, cache: VerifiedCache, *, endpoint: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.cache = cache
        self.endpoint = endpoint

    def describe(self) -> str:
        return f"s3://{self.bucket} on {self.endpoint}" if self.endpoint else f"s3://{self.bucket}"

    # ---- error mapping ---------------------------------------------------------------------------------------
    # Messages name the bucket (clients use it in s3:// references); the endpoint and low-level causes are the
    # server's layout, and go into the error's detail (the log and the CLI) only.
    def _call(self, fn: Callable[[], T], *, missing: str | None = None) -> T:
        where = self.describe()
        try:
            return fn()
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject") and missing is not None:
                raise AdapterNotFound(missing, detail=where) from None
            if exc.code == "NoSuchBucket":
                raise StoreUnavailable(f"bucket {self.bucket!r} does not exist (MINIO_BUCKET)", retryable=False,
                                       detail=where) from None
            if exc.code in _CREDENTIAL_ERRORS:
                raise StoreUnavailable(
                    f"the adapter store refused the credentials ({exc.code}): check MINIO_ACCESS_KEY/MINIO_SECRET_KEY",
                    retryable=False, detail=where,
                ) from None
            raise StoreUnavailable(f"the adapter store answered {exc.code}", detail=f"{where}: {exc.message}") from None
        except (ServerError, InvalidResponseError) as exc:
            raise StoreUnavailable("the adapter store failed", detail=f"{where}: {_short(exc)}") from None
        except (urllib3.exceptions.HTTPError, MinioException, OSError) as exc:
            raise StoreUnavailable(f"cannot reach the adapter store s3://{self.bucket}",
                                   detail=f"{where}: {_short(exc)}") from None

    def _key(self, name: str, file: str) -> str:
        return f"{name}/{file}"

    def _get_bytes(self, key: str, *, missing: str) -> bytes:
        def get() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call(get, missing=missing)

    @contextlib.contextmanager
    def _stream(self, name: str, file: str) -> Iterator[Iterator[bytes]]:
        key = self._key(name, file)
        response = self._call(lambda: self.client.get_object(self.bucket, key),
                              missing=f"{key} is listed in the manifest but missing from the store")
        try:
            yield self._chunks(response)
        finally:
            response.close()
            response.release_conn()

    def _chunks(self, response: Any) -> Iterator[bytes]:
        stream = response.stream(CHUNK)
        while True:
            chunk = self._call(lambda: next(stream, None))
            if chunk is None:
                return
            yield chunk

    # ---- reading ---------------------------------------------------------------------------------------------
    def manifest(self, name: str) -> Manifest:
        raw = self._get_bytes(self._key(name, MANIFEST_FILE),
                              missing=f"adapter {name!r} is not in s3://{self.bucket} (no {MANIFEST_FILE})")
        return Manifest.from_json(raw)

    def list(self) -> list[Manifest]:
        def names() -> list[str]:
            found = []
            for obj in self.client.list_objects(self.bucket, recursive=True):
                key = obj.object_name or ""
                if key.endswith("/" + MANIFEST_FILE):
                    found.append(key[: -len(MANIFEST_FILE) - 1])
            return sorted(found)

        items = []
        for name in self._call(names):
            try:
                items.append(self.manifest(name))
            except (AdapterNotFound, AdapterInvalid) as exc:
                log.warning("skipping %s in %s: %s", name, self.describe(), exc)
        return items

    def fetch(self, name: str, progress: Progress | None = None) -> FetchedAdapter:
        for attempt in (1, 2):
            manifest = self.manifest(name)
            try:
                return self.cache.fetch(manifest, lambda f: self._stream(name, f), progress)
            except AdapterInvalid:
                # A publish may have replaced the files after we read the manifest: try the new version once.
                if attempt == 1 and self.manifest(name).digest != manifest.digest:
                    continue
                raise
        raise AssertionError("unreachable")

    def verify(self, name: str, progress: Progress | None = None) -> Manifest:
        manifest = self.manifest(name)
        total, done = manifest.size, 0
        for file, entry in manifest.files.items():
            import hashlib

            h = hashlib.sha256()
            size = 0
            with self._stream(name, file) as chunks:
                for chunk in chunks:
                    h.update(chunk)
                    size += len(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress("verifying", done, total)
            if (size, h.hexdigest()) != (entry.size, entry.sha256):
                raise AdapterInvalid(f"{name}/{file} does not match its manifest (sha256 {h.hexdigest()[:12]}…, "
                                     f"expected {entry.sha256[:12]}…)")
        return manifest

    # ---- writing ---------------------------------------------------------------------------------------------
    def publish(self, name: str, source: Path, *, replace: bool = False, progress: Progress | None = None) -> Manifest:
        check_name(name)
        facts = inspect_adapter(source)
        try:
            previous: Manifest | None = self.manifest(name)
        except AdapterNotFound:
            previous = None
        except AdapterInvalid:
            previous = None  # a broken manifest is overwritten on replace
            if not replace:
                raise AdapterConflict(f"{name!r} exists in s3://{self.bucket} (with a broken manifest); "
                                      "push with --replace to overwrite it") from None
        if previous is not None and not replace:
            raise AdapterConflict(f"adapter {name!r} already exists in s3://{self.bucket}; push with --replace to "
                                  "overwrite it")
        files = list(adapter_files(facts))
        entries: dict[str, FileEntry] = {f: hash_file(Path(source) / f) for f in files}
        total = sum(e.size for e in entries.values())
        done = [0]

        def on_bytes(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress("uploading", done[0], total)

        for file in files:
            path = Path(source) / file
            with path.open("rb") as f:
                reader = _Upload(f, on_bytes)
                self._call(lambda r=reader, p=path, k=self._key(name, file): self.client.put_object(  # type: ignore[misc]
                    self.bucket, k, r, length=p.stat().st_size, part_size=16 * CHUNK))
        manifest = build_manifest(name, facts, entries)
        body = manifest.to_json().encode()
        self._call(lambda: self.client.put_object(self.bucket, self._key(name, MANIFEST_FILE), io.BytesIO(body),
                                                  length=len(body), content_type="application/json"))
        if previous is not None:
            for stale in set(previous.files) - set(files):
                self._call(lambda s=stale: self.client.remove_object(self.bucket, self._key(name, s)))  # type: ignore[misc]
        return manifest

    def remove(self, name: str) -> None:
        manifest = self.manifest(name)  # AdapterNotFound when absent
        # The manifest goes first: from then on the adapter is not published, whatever happens next.
        self._call(lambda: self.client.remove_object(self.bucket, self._key(name, MANIFEST_FILE)))
        for file in manifest.files:
            self._call(lambda f=file: self.client.remove_object(self.bucket, self._key(name, f)))  # type: ignore[misc]

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (used by the CLI and tests; the worker never creates buckets)."""
        if not self._call(lambda: self.client.bucket_exists(self.bucket)):
            self._call(lambda: self.client.make_bucket(self.bucket))


def _short(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason or exc)
    return text if len(text) < 300 else text[:300] + "…"
