"""Model-independent adapter validation: config, safetensors header, shapes, no pickles."""

from __future__ import annotations

import json
import struct

import pytest

from adapters.validate import inspect_adapter, read_safetensors_header
from wire.errors import AdapterInvalid, AdapterNotFound

from ..helpers import edit_config


def test_valid_adapter_facts(good_adapter):
    """A real PEFT adapter yields its rank, alpha, targets and adapted modules."""
    facts = inspect_adapter(good_adapter)
    assert facts.rank == 8 and facts.alpha == 16
    assert facts.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert all(name.startswith("model.language_model.layers.") for name in facts.modules)
    assert len(facts.modules) == 8 and facts.tensor_bytes > 0


def test_missing_directory_is_not_found(tmp_path):
    """A directory that does not exist is adapter_not_found (not invalid)."""
    with pytest.raises(AdapterNotFound):
        inspect_adapter(tmp_path / "nope")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "adapter_config.json").unlink(), "missing adapter_config.json"),
        (lambda d: (d / "adapter_config.json").write_text("{oops"), "not valid JSON"),
        (lambda d: (d / "adapter_config.json").write_text("[]"), "JSON object"),
        (lambda d: edit_config(d, peft_type="PREFIX_TUNING"), "only LoRA"),
        (lambda d: edit_config(d, r=0), "positive integer"),
        (lambda d: edit_config(d, r=4), "rank 8 but"),
        (lambda d: edit_config(d, target_modules=[]), "target_modules"),
        (lambda d: edit_config(d, use_dora=True), "DoRA"),
        (lambda d: edit_config(d, modules_to_save=["lm_head"]), "modules_to_save"),
        (lambda d: (d / "adapter_model.safetensors").unlink(), "missing adapter_model.safetensors"),
    ],
)
def test_invalid_configs_and_files(good_adapter, mutate, message):
    """Each broken part is adapter_invalid with a message that says which."""
    mutate(good_adapter)
    with pytest.raises(AdapterInvalid, match=message):
        inspect_adapter(good_adapter)


def test_pickle_only_adapter_is_refused_without_unpickling(good_adapter):
    """An adapter with only adapter_model.bin is refused; the pickle is never opened."""
    weights = good_adapter / "adapter_model.safetensors"
    weights.rename(good_adapter / "adapter_model.bin")
    (good_adapter / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(AdapterInvalid, match="pickle-only"):
        inspect_adapter(good_adapter)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: raw[:-7],  # truncated data
        lambda raw: raw[:5],  # no header
        lambda raw: struct.pack("<Q", 10**12) + raw[8:],  # impossible header length
        lambda raw: raw[:8] + b"}" + raw[9:],  # broken JSON
        lambda raw: raw + b"trailing",  # bytes the header does not describe
        lambda raw: bytes(len(raw)),  # zeros
    ],
)
def test_corrupt_safetensors(good_adapter, corrupt):
    """Truncated, padded or scrambled safetensors files are adapter_invalid."""
    path = good_adapter / "adapter_model.safetensors"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(AdapterInvalid, match="safetensors"):
        inspect_adapter(good_adapter)


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (n - len(new)) if len(new) <= n else b""
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_mismatched_lora_shapes_are_invalid(good_adapter):
    """A and B ranks that disagree are adapter_invalid."""
    path = good_adapter / "adapter_model.safetensors"
    header = read_safetensors_header(path)
    key = next(k for k in header if k.endswith("lora_B.weight"))

    def edit(h):
        h[key]["shape"] = [h[key]["shape"][1], h[key]["shape"][0]]

    _rewrite_header(path, edit)
    with pytest.raises(AdapterInvalid, match=r"mismatched LoRA shapes|rank"):
        inspect_adapter(good_adapter)


def test_foreign_tensors_are_invalid(good_adapter):
    """A tensor that is not a LoRA A/B weight (e.g. a full layer) is refused."""
    path = good_adapter / "adapter_model.safetensors"
    header = read_safetensors_header(path)
    key = next(iter(header))

    def edit(h):
        h["base_model.model.lm_head.weight"] = h.pop(key)

    _rewrite_header(path, edit)
    with pytest.raises(AdapterInvalid, match="unexpected tensor"):
        inspect_adapter(good_adapter)
