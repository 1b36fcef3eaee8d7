"""Model-independent adapter validation: config, safetensors header, shapes, no pickles."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest

from adapters.validate import ModuleShape, check_compatible, inspect_adapter, read_safetensors_header, target_rule
from wire.errors import AdapterIncompatible, AdapterInvalid, AdapterNotFound

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
        (lambda d: (d / "adapter_config.json").write_text("{}"), "adapter_config.json has no peft_type"),
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


# ---- the adapter against a model's table of module shapes (check_compatible) ------------------------------------


def _model_of(facts, **changes):
    """The table of a model the adapter fits: its modules, plus a few others (a norm, a module of another kind)."""
    shapes = {name: ModuleShape("linear", m.in_features, m.out_features, "Linear") for name, m in facts.modules.items()}
    shapes["model.language_model.norm"] = ModuleShape("other", type_name="RMSNorm")
    shapes["model.language_model.layers.0.mlp.up_proj"] = ModuleShape("linear", 64, 128, "Linear")
    shapes.update(changes)
    return shapes


def test_an_adapter_fits_the_table_of_its_model(good_adapter):
    """The demo adapter fits a table of its own modules, by PEFT's name rule and by an engine's rule alike."""
    facts = inspect_adapter(good_adapter)
    check_compatible(facts, _model_of(facts))
    check_compatible(facts, _model_of(facts), targeted=lambda name: name in facts.modules)


def test_refused_config_fields_come_first(good_adapter):
    """A config field beyond plain LoRA is adapter_invalid, named, whatever else is wrong."""
    facts = inspect_adapter(edit_config(good_adapter, fan_in_fan_out=True))
    with pytest.raises(AdapterInvalid, match="fan_in_fan_out=True"):
        check_compatible(facts, {})


def test_modules_the_model_lacks_are_another_architecture(good_adapter):
    """Adapted modules absent from the model (an adapter for another architecture would do nothing) are refused."""
    facts = inspect_adapter(good_adapter)
    shapes = _model_of(facts)
    del shapes[next(iter(facts.modules))]
    with pytest.raises(AdapterIncompatible, match=r"1 of 8 adapted modules do not exist .* another architecture"):
        check_compatible(facts, shapes)


@pytest.mark.parametrize(("shape", "described"), [
    (ModuleShape("linear", 64, 99, "Linear"), "Linear 64→99"),
    (ModuleShape("linear", 64, 99), "64→99"),
    (ModuleShape("embedding", 64, 64, "Embedding"), "Embedding 64→64"),
    (ModuleShape("other", type_name="Conv3d"), "Conv3d"),
])
def test_a_module_of_another_size_or_kind_is_another_base_model(good_adapter, shape, described):
    """The refusal names what the adapter expects and what the model has."""
    facts = inspect_adapter(good_adapter)
    name, spec = next(iter(facts.modules.items()))
    with pytest.raises(AdapterIncompatible) as info:
        check_compatible(facts, _model_of(facts, **{name: shape}))
    assert info.value.message == (f"module {name}: adapter expects {spec.in_features}→{spec.out_features}, the model "
                                  f"has {described} (wrong base model or size)")


def test_target_modules_and_weights_must_agree(good_adapter):
    """target_modules selecting a module without weights (a silent no-op) or none at all is refused."""
    facts = inspect_adapter(edit_config(good_adapter, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "up_proj"]))
    with pytest.raises(AdapterIncompatible, match=r"no weights in the adapter .*up_proj"):
        check_compatible(facts, _model_of(facts))
    facts = inspect_adapter(edit_config(good_adapter, target_modules=["gate_proj"]))
    with pytest.raises(AdapterIncompatible, match="none of target_modules"):
        check_compatible(facts, _model_of(facts))


def test_an_engine_without_embedding_adapters_names_itself(good_adapter):
    """An engine that serves no embedding adapters refuses them, naming itself."""
    facts = inspect_adapter(good_adapter)
    name, spec = next(iter(facts.modules.items()))
    facts = replace(facts, modules={**facts.modules, name: replace(spec, embedding=True)})
    with pytest.raises(AdapterIncompatible, match="embedding adapters are not served by the vLLM engine"):
        check_compatible(facts, _model_of(facts), no_embeddings="the vLLM engine")


def test_peft_name_rule():
    """A list entry matches a name or its last dotted parts; a string is a whole-name regular expression;
    all-linear cannot be decided on names."""
    listed, pattern = target_rule(["q_proj"]), target_rule(r".*\.(q|v)_proj")
    assert listed is not None and pattern is not None
    assert listed("model.layers.0.self_attn.q_proj") and not listed("model.layers.0.self_attn.qq_proj")
    assert pattern("a.v_proj") and not pattern("v_proj")
    assert target_rule("all-linear") is None
    with pytest.raises(AdapterInvalid, match="regular expression"):
        target_rule("(")
