"""Behaviour specific to the local directory store."""

from __future__ import annotations

from adapters.local import LocalDirectoryStore

from ..helpers import copy_adapter


def test_hand_copied_adapter_without_manifest_is_served(tmp_path, good_adapter):
    """A PEFT directory copied into the store by hand gets a computed manifest."""
    store = LocalDirectoryStore(tmp_path / "store")
    copy_adapter(good_adapter, store.root / "manual")
    manifest = store.manifest("manual")
    assert manifest.name == "manual" and manifest.rank == 8
    assert [m.name for m in store.list()] == ["manual"]


def test_publish_leaves_no_staging_directories(tmp_path, good_adapter):
    """Publishing renames a staging directory into place; nothing else remains."""
    store = LocalDirectoryStore(tmp_path / "store")
    store.publish("a", good_adapter)
    store.publish("a", good_adapter, replace=True)
    assert sorted(p.name for p in store.root.iterdir()) == ["a"]
