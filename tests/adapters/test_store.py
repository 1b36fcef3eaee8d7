"""The store suite: the local directory store and the S3 store (a real S3 server) pass the same tests."""

from __future__ import annotations

import io
import json

import pytest

from adapters.cache import VerifiedCache
from adapters.local import LocalDirectoryStore
from adapters.s3 import S3Store
from wire.errors import AdapterConflict, AdapterForbidden, AdapterInvalid, AdapterNotFound

from ..helpers import copy_adapter


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalDirectoryStore(tmp_path / "store")
    s3 = request.getfixturevalue("s3")
    return S3Store(s3.client(), s3.new_bucket(), VerifiedCache(tmp_path / "cache", 10**9), endpoint=s3.endpoint)


def overwrite(store, name: str, file: str, data: bytes) -> None:
    """Change a stored file behind the store's back (as a bad disk or an attacker would)."""
    if isinstance(store, LocalDirectoryStore):
        (store.root / name / file).write_bytes(data)
    else:
        store.client.put_object(store.bucket, f"{name}/{file}", io.BytesIO(data), len(data))


def test_publish_list_fetch_verify_remove(store, good_adapter):
    """The whole lifecycle works and the manifest records sizes, hashes and LoRA facts."""
    manifest = store.publish("team-a", good_adapter)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(manifest.files) <= {
        "adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert manifest.rank == 8 and manifest.name == "team-a" and len(manifest.digest) == 64
    assert [m.name for m in store.list()] == ["team-a"]
    fetched = store.fetch("team-a")
    assert fetched.manifest == manifest and (fetched.path / "adapter_model.safetensors").is_file()
    fetched.release()
    assert store.verify("team-a") == manifest
    store.remove("team-a")
    assert store.list() == [] and not store.exists("team-a")
    with pytest.raises(AdapterNotFound):
        store.fetch("team-a")
    with pytest.raises(AdapterNotFound):
        store.remove("team-a")


def test_digest_is_content_addressed(store, good_adapter, tmp_path):
    """Same files → same digest under any name; one changed byte → a new digest."""
    a = store.publish("a", good_adapter)
    b = store.publish("b", good_adapter)
    assert a.digest == b.digest
    changed = copy_adapter(good_adapter, tmp_path / "changed")
    config = json.loads((changed / "adapter_config.json").read_text())
    config["lora_alpha"] = 32
    (changed / "adapter_config.json").write_text(json.dumps(config))
    c = store.publish("a", changed, replace=True)
    assert c.digest != a.digest and store.manifest("a").alpha == 32
    fetched = store.fetch("a")
    assert json.loads((fetched.path / "adapter_config.json").read_text())["lora_alpha"] == 32


def test_name_collision_needs_replace(store, good_adapter):
    """Publishing over an existing name is adapter_conflict unless replace is asked for."""
    store.publish("x", good_adapter)
    with pytest.raises(AdapterConflict):
        store.publish("x", good_adapter)


def test_invalid_source_is_not_published(store, good_adapter):
    """A broken adapter is refused before anything is written."""
    (good_adapter / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterInvalid):
        store.publish("bad", good_adapter)
    assert store.list() == [] and not store.exists("bad")


def test_pickle_only_adapter_is_not_published(store, good_adapter):
    """An adapter with only pickle weights is refused by push."""
    (good_adapter / "adapter_model.safetensors").rename(good_adapter / "adapter_model.bin")
    with pytest.raises(AdapterInvalid, match="pickle-only"):
        store.publish("pickled", good_adapter)


def test_bad_names_are_refused(store, good_adapter):
    """Names outside the pattern never reach the file system or the server."""
    for name in ("../x", ".x", "a/b", ""):
        with pytest.raises(AdapterForbidden):
            store.publish(name, good_adapter)


def test_tampered_file_fails_verify_and_fetch(store, good_adapter):
    """A changed byte in a stored file is caught by verify and by fetch (sha256 or size against the manifest)."""
    store.publish("t", good_adapter)
    raw = bytearray((good_adapter / "adapter_model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    overwrite(store, "t", "adapter_model.safetensors", bytes(raw))
    with pytest.raises(AdapterInvalid, match="does not match"):
        store.verify("t")
    if isinstance(store, S3Store):
        with pytest.raises(AdapterInvalid, match="does not match"):
            store.fetch("t")
        assert not list((store.cache.objects).iterdir()), "nothing unverified reaches the cache"
    overwrite(store, "t", "adapter_model.safetensors", bytes(raw) + b"x")
    with pytest.raises(AdapterInvalid, match=r"does not match|larger than"):
        store.fetch("t")


def test_missing_adapter_is_not_found(store):
    """Fetching, verifying or removing an absent adapter is adapter_not_found."""
    for call in (store.manifest, store.fetch, store.verify, store.remove):
        with pytest.raises(AdapterNotFound):
            call("nothing-here")
