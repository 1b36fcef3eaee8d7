"""The per-row LoRA of the batched engine computes what PEFT computes, refuses what it cannot, and leaves no trace."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from adapters.validate import inspect_adapter
from inference_worker.engines.transformers import TransformersEngine
from inference_worker.engines.transformers.lora import LoraMapping
from inference_worker.engines.transformers.model import load_model
from wire.errors import AdapterError, ErrorCode

from .engine_harness import Reference, collect, collect_all, picture, request


@pytest.fixture(scope="module")
def engine(demo):
    eng = TransformersEngine(load_model(str(demo.model_dir), dtype="float32"), max_running=8,
                             kv_cache_max_bytes=64 << 20, vision_cache_max_bytes=0)
    yield eng
    asyncio.run(eng.close())


def peft_adapter(model_dir, out, **config):
    """An adapter written by PEFT itself with the given LoraConfig fields (non-zero B, like a trained one)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(11)
    base = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(init_lora_weights=False, lora_dropout=0.0, **config))
    peft.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # PEFT's notes on tied embeddings when it writes the adapter
@pytest.mark.parametrize("config", [
    {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "use_rslora": True},
    {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "o_proj", "down_proj"],
     "rank_pattern": {"o_proj": 4}, "alpha_pattern": {"k_proj": 3, "down_proj": 40}},
    {"r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens", "lm_head", "gate_proj"]},
], ids=["rslora", "rank-and-alpha-patterns", "embedding-and-lm-head"])
async def test_scaling_rules_match_peft(engine, demo, tmp_path, config):
    """rsLoRA, per-module ranks and alphas, embedding and lm_head adapters give PEFT's exact outputs."""
    path = peft_adapter(demo.model_dir, tmp_path / "adapter", **config)
    await engine.add_adapter("x", inspect_adapter(path))
    try:
        ref = Reference(demo.model_dir, {"x": path})
        for images in ((), (picture(1),)):
            req = request("Describe the process.", images=images, adapter="x", max_tokens=16)
            assert (await collect(engine, req)).text == ref.generate(req)
    finally:
        await engine.remove_adapter("x")


@pytest.mark.parametrize("change", [{"use_dora": True}, {"alora_invocation_tokens": [1, 2]},
                                    {"layer_replication": [[0, 1]]}, {"fan_in_fan_out": True}])
async def test_lora_variants_are_refused(engine, demo, tmp_path, change):
    """Adapters whose arithmetic is not plain LoRA are refused at load and leave nothing behind."""
    from ..helpers import copy_adapter

    path = copy_adapter(demo.store_dir / "demo-a", tmp_path / "variant")
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(change)
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError) as info:
        facts = inspect_adapter(path)
        await engine.add_adapter("variant", facts)
    assert info.value.code == ErrorCode.ADAPTER_INVALID
    assert "variant" not in engine.bank.adapters and not engine.bank.hooked_modules()


async def test_removing_every_adapter_restores_the_base_exactly(engine, demo):
    """After adapters come and go, no hook is left and the base logits are bit-identical to before."""
    model = engine.lm.model
    ids = torch.tensor([[5, 17, 99, 3, 250, 42]])

    def logits():
        with torch.inference_mode():
            return model(input_ids=ids).logits.clone()

    before = logits()
    for name in ("demo-a", "demo-b"):
        await engine.add_adapter(name, inspect_adapter(demo.store_dir / name))
    with engine.bank.mapping(LoraMapping(uniform="demo-a")):
        assert not torch.equal(logits(), before), "the adapter changes the output"
    for name in ("demo-a", "demo-b"):
        await engine.remove_adapter(name)
    assert not engine.bank.hooked_modules() and torch.equal(logits(), before)


async def test_grouped_rows_equal_uniform_forward(engine, demo):
    """A decode-style batch with rows on different adapters gives each row what a one-adapter forward gives it."""
    for name in ("demo-a", "demo-b"):
        await engine.add_adapter(name, inspect_adapter(demo.store_dir / name))
    try:
        layer = engine.lm.model.model.language_model.layers[0].self_attn.q_proj
        torch.manual_seed(0)
        x = torch.randn(5, 1, layer.in_features)
        rows = ["demo-a", None, "demo-b", "demo-a", None]
        with torch.inference_mode():
            with engine.bank.mapping(LoraMapping.for_rows(rows, "cpu")):
                grouped = layer(x)
            for i, name in enumerate(rows):
                with engine.bank.mapping(LoraMapping(uniform=name)):
                    assert torch.allclose(grouped[i], layer(x[i:i + 1])[0], rtol=1e-5, atol=1e-5), (i, name)
        outs = await collect_all(engine, [request(adapter=a, max_tokens=12) for a in rows])
        assert outs[0].text == outs[3].text and outs[1].text == outs[4].text
        assert len({outs[0].text, outs[1].text, outs[2].text}) == 3
    finally:
        for name in ("demo-a", "demo-b"):
            await engine.remove_adapter(name)
