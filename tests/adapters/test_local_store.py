"""The local directory store: publish, list, fetch, verify, remove; atomic and content-addressed."""

from __future__ import annotations

import json

import pytest

from adapters.local import LocalDirectoryStore
from inference_worker.errors import AdapterConflict, AdapterForbidden, AdapterInvalid, AdapterNotFound

from ..helpers import copy_adapter


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "store")


def test_publish_list_fetch_verify_remove(store, good_adapter):
    """The whole lifecycle works and the manifest records sizes, hashes and LoRA facts."""
    manifest = store.publish("team-a", good_adapter)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(manifest.files) <= {
        "adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert manifest.rank == 8 and manifest.name == "team-a" and len(manifest.digest) == 64
    assert [m.name for m in store.list()] == ["team-a"]
    fetched = store.fetch("team-a")
    assert fetched.manifest == manifest and (fetched.path / "adapter_model.safetensors").is_file()
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
    assert not store.root.exists() or not list(store.root.iterdir())


def test_bad_names_are_refused(store, good_adapter):
    """Names outside the pattern never reach the file system."""
    for name in ("../x", ".x", "a/b", ""):
        with pytest.raises(AdapterForbidden):
            store.publish(name, good_adapter)
        with pytest.raises(AdapterForbidden):
            store.manifest(name)


def test_tampered_file_fails_verify_and_fetch(store, good_adapter):
    """verify re-hashes and reports a changed file; fetch notices a resized one."""
    store.publish("t", good_adapter)
    weights = store.root / "t" / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(AdapterInvalid, match="does not match its manifest"):
        store.verify("t")
    weights.write_bytes(bytes(raw) + b"x")
    with pytest.raises(AdapterInvalid, match="does not match its manifest"):
        store.fetch("t")


def test_hand_copied_adapter_without_manifest_is_served(store, good_adapter):
    """A PEFT directory copied into the store by hand gets a computed manifest."""
    copy_adapter(good_adapter, store.root / "manual")
    manifest = store.manifest("manual")
    assert manifest.name == "manual" and manifest.rank == 8
    assert [m.name for m in store.list()] == ["manual"]
