"""Adapter references: names, s3:// URLs and local paths are authorised before anything is touched."""

from __future__ import annotations

import os

import pytest

from adapters.refs import LocalRef, S3Ref, StoreRef, parse_ref, safe_join
from wire.errors import AdapterForbidden


@pytest.mark.parametrize("name", ["demo-a", "A", "my_adapter.v2", "x" * 128, "0-start"])
def test_valid_names_are_store_refs(name):
    """Names matching the pattern resolve to the store."""
    assert parse_ref(name) == StoreRef(name)


@pytest.mark.parametrize(
    "value",
    ["..", ".", "../etc/passwd", "-lead", ".hidden", "x" * 129, "a/b", "with space", "ends.", "name\x00",
     "http://evil/adapter", "file:///etc/passwd", "ftp://x/y", "hf://Qwen/x", ""],
)
def test_refused_references(value):
    """Traversal, bad names, relative paths and other schemes are adapter_forbidden."""
    with pytest.raises(AdapterForbidden):
        parse_ref(value)


def test_s3_refs_need_a_store_and_an_allowed_bucket():
    """s3:// is refused without an S3 store, outside the allow-list, and with bad prefixes."""
    with pytest.raises(AdapterForbidden, match="MINIO_ENDPOINT"):
        parse_ref("s3://adapters/demo-a")
    assert parse_ref("s3://adapters/demo-a", allowed_buckets=["adapters"]) == S3Ref("adapters", "demo-a")
    assert parse_ref("s3://adapters/team/demo-a/", allowed_buckets=["adapters"]) == S3Ref("adapters", "team/demo-a")
    for bad in ("s3://other/demo-a", "s3://adapters/", "s3://adapters/../x", "s3://adapters/a//b", "s3://A_B/x"):
        with pytest.raises(AdapterForbidden):
            parse_ref(bad, allowed_buckets=["adapters"])


def test_local_paths_must_resolve_inside_a_root(tmp_path):
    """Absolute paths resolve (symlinks followed) and must stay inside ADAPTER_LOCAL_ROOTS."""
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link-out")
    assert parse_ref(str(root / "ok"), local_roots=[root]) == LocalRef((root / "ok").resolve())
    for bad in (str(root / ".." / "outside"), str(root / "link-out"), str(outside), "/etc"):
        with pytest.raises(AdapterForbidden):
            parse_ref(bad, local_roots=[root])
    with pytest.raises(AdapterForbidden, match="ADAPTER_LOCAL_ROOTS is empty"):
        parse_ref(str(root / "ok"))


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", "a/./b", "", "c:evil", "a\\..\\..\\x", "x\x00"])
def test_safe_join_refuses_escapes(tmp_path, key):
    """Untrusted keys never join to a path outside the root."""
    with pytest.raises(AdapterForbidden):
        safe_join(tmp_path, key)


def test_safe_join_accepts_plain_keys(tmp_path):
    """Plain relative keys join inside the root."""
    assert safe_join(tmp_path, "a/b.json") == (tmp_path / "a" / "b.json").resolve()
