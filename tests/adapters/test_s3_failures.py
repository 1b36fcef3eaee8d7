"""The S3 store and its verified cache when things go wrong: credentials, buckets, keys, outages, races, size."""

from __future__ import annotations

import io
import time

import pytest

from adapters.cache import VerifiedCache
from adapters.manifest import MANIFEST_FILE, Manifest
from adapters.s3 import S3Store
from wire.errors import AdapterForbidden, AdapterInvalid, StoreUnavailable

from ..helpers import at_once, copy_adapter, edit_config


@pytest.fixture
def bucket(s3):
    return s3.new_bucket("f")


def make_store(s3, bucket, tmp_path, max_bytes=10**9, **client):
    return S3Store(s3.client(**client), bucket, VerifiedCache(tmp_path / "cache", max_bytes), endpoint=s3.endpoint)


def test_wrong_credentials_are_a_clear_non_retryable_error(s3, bucket, tmp_path):
    """A wrong secret key is store_unavailable, not retryable, naming the credentials."""
    store = make_store(s3, bucket, tmp_path, secret_key="wrong-secret")
    with pytest.raises(StoreUnavailable, match="credentials") as info:
        store.list()
    assert info.value.retryable is False


def test_missing_bucket_is_a_clear_error(s3, tmp_path):
    """A bucket that does not exist is named in the error."""
    store = make_store(s3, "no-such-bucket-here", tmp_path)
    with pytest.raises(StoreUnavailable, match="does not exist"):
        store.manifest("anything")


def test_unreachable_server_is_retryable_and_bounded(s3, tmp_path):
    """Nothing listening: store_unavailable (retryable) within the bounded retries."""
    from adapters.s3 import make_client
    from tools.s3server import free_ports

    store = S3Store(make_client(f"127.0.0.1:{free_ports(1)[0]}", "k", "s", timeout_s=1, retries=2), "bucket",
                    VerifiedCache(tmp_path / "c", 10**9))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.list()
    assert info.value.retryable is True and time.monotonic() - started < 10


def put_manifest(store, name, manifest: Manifest):
    body = manifest.to_json().encode()
    store.client.put_object(store.bucket, f"{name}/{MANIFEST_FILE}", io.BytesIO(body), len(body))


def test_traversal_key_in_a_manifest_writes_nothing_outside_the_cache(s3, bucket, tmp_path, good_adapter):
    """A manifest that lists '../../evil' is refused before any download; nothing is written outside the cache."""
    store = make_store(s3, bucket, tmp_path)
    manifest = store.publish("a", good_adapter)
    files = dict(manifest.files)
    files["../../evil.json"] = files["adapter_config.json"]
    put_manifest(store, "a", manifest.model_copy(update={"files": files}))
    with pytest.raises(AdapterForbidden):
        store.fetch("a")
    assert not (tmp_path / "evil.json").exists() and not (tmp_path.parent / "evil.json").exists()
    assert not list(store.cache.objects.iterdir())


def test_pickle_listed_in_a_manifest_is_never_downloaded(s3, bucket, tmp_path, good_adapter):
    """A manifest that lists adapter_model.bin is refused: pickles are never fetched or loaded."""
    store = make_store(s3, bucket, tmp_path)
    manifest = store.publish("p", good_adapter)
    files = {"adapter_config.json": manifest.files["adapter_config.json"],
             "adapter_model.bin": manifest.files["adapter_model.safetensors"]}
    put_manifest(store, "p", manifest.model_copy(update={"files": files}))
    with pytest.raises(AdapterInvalid, match="pickle"):
        store.fetch("p")


def test_concurrent_fetches_share_one_download(s3, bucket, tmp_path, good_adapter):
    """Eight threads fetching one adapter at once download it once."""
    store = make_store(s3, bucket, tmp_path)
    store.publish("shared", good_adapter)
    results = at_once(8, lambda: store.fetch("shared"))
    assert sorted(r.cached for r in results) == [False] + [True] * 7
    assert len({r.path for r in results}) == 1


def test_republished_adapter_is_fetched_again_unchanged_one_is_not(s3, bucket, tmp_path, good_adapter):
    """The cache key is the digest: a new version downloads, the same version does not."""
    store = make_store(s3, bucket, tmp_path)
    store.publish("v", good_adapter)
    first = store.fetch("v")
    assert not first.cached and store.fetch("v").cached
    changed = edit_config(copy_adapter(good_adapter, tmp_path / "v2"), lora_alpha=64)
    store.publish("v", changed, replace=True)
    second = store.fetch("v")
    assert not second.cached and second.path != first.path


def test_cache_stays_under_its_byte_bound(s3, bucket, tmp_path, good_adapter):
    """With room for one adapter, fetching a second evicts the least recently used first one."""
    size = sum(p.stat().st_size for p in good_adapter.iterdir())
    store = make_store(s3, bucket, tmp_path, max_bytes=int(size * 1.6))
    store.publish("one", good_adapter)
    store.publish("two", edit_config(copy_adapter(good_adapter, tmp_path / "two"), lora_alpha=3))
    a = store.fetch("one")
    a.release()
    b = store.fetch("two")
    b.release()
    assert [p.name for p in store.cache.objects.iterdir()] == [b.manifest.digest]
    assert store.cache.size() <= store.cache.max_bytes


def test_entries_in_use_are_not_evicted(s3, bucket, tmp_path, good_adapter):
    """An entry fetched but not yet released survives eviction (the worker is still reading it)."""
    store = make_store(s3, bucket, tmp_path, max_bytes=1)
    store.publish("one", good_adapter)
    store.publish("two", edit_config(copy_adapter(good_adapter, tmp_path / "two"), lora_alpha=3))
    held = store.fetch("one")
    other = store.fetch("two")
    assert (held.path / "adapter_model.safetensors").is_file()
    held.release()
    other.release()
    store.cache.evict()
    assert not list(store.cache.objects.iterdir())


def test_crash_leftovers_are_never_served(tmp_path):
    """A half-written download (a crash) sits in tmp/ and is removed at startup; it never looks complete."""
    cache = VerifiedCache(tmp_path / "c", 10**9)
    leftover = cache.tmp / "deadbeef-crash"
    leftover.mkdir()
    (leftover / "adapter_model.safetensors").write_bytes(b"half")
    half_entry = cache.objects / ("a" * 64)
    half_entry.mkdir()
    (half_entry / "adapter_config.json").write_text("{}")
    cache = VerifiedCache(tmp_path / "c", 10**9)
    assert not leftover.exists()
    assert cache.entries() == []  # an entry without its manifest is not complete
