"""The direct thread-local forward of plain LoRA Linear layers computes exactly what PEFT's mixed-batch path does."""

from __future__ import annotations

import torch
from peft.tuners.lora import Linear as LoraLinear

from adapters.validate import inspect_adapter
from inference_worker.engine import Engine
from inference_worker.lora import LoraRuntime, active_adapter


def test_thread_adapter_forward_matches_peft_mixed_batch(demo):
    engine = Engine.load(str(demo.model_dir), device="cpu", dtype="float32")
    runtime = LoraRuntime(engine.model)
    for name in ("demo-a", "demo-b"):
        facts = inspect_adapter(demo.store_dir / name)
        runtime.inject(name, facts, runtime.check_compatible(facts))
    layers = [m for m in engine.model.modules() if isinstance(m, LoraLinear)]
    assert layers and all(getattr(m, "_iw_hooked", False) for m in layers)
    torch.manual_seed(0)
    changed = 0
    for layer in layers:
        x = torch.randn(1, 5, layer.in_features)
        for name in ("demo-a", "demo-b", None):
            with active_adapter(name), torch.inference_mode():
                fast = layer(x)
                peft = type(layer).forward(layer, x, adapter_names=[name or "__base__"])
                base = layer.base_layer(x)
            assert torch.equal(fast, peft), (name, layer)
            changed += int(name is not None and not torch.equal(fast, base))
    assert changed > 0, "the adapters change the layers' outputs"
    runtime.delete("demo-a")
    with active_adapter("demo-a"), torch.inference_mode():  # a deleted adapter falls back to the base weights
        x = torch.randn(1, 3, layers[0].in_features)
        assert torch.equal(layers[0](x), layers[0].base_layer(x))
