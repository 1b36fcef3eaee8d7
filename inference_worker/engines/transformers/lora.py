"""LoRA adapters applied per row of a batch: many adapters on one shared model, in one forward pass.

The base model is never modified. An adapted module (``nn.Linear``, or ``nn.Embedding`` for embedding adapters)
gets a forward hook that adds ``scale · B(A(x))`` for the rows whose request uses an adapter with weights for that
module. Which rows use which adapter is the :class:`LoraMapping` of the forward pass being run — set by the one
thread that owns the model right before each forward (``with bank.mapping(...)``), like vLLM's LoRA mapping: it
travels with the batch, never with a thread. A module no loaded adapter adapts has no hook, so the base model runs
exactly as it was loaded (bit-identical outputs once every adapter is removed).

The arithmetic is PEFT's (``lora_B(lora_A(x)) * scaling`` added to the base output; ``alpha / r`` scaling, or
``alpha / sqrt(r)`` with rsLoRA; ``rank_pattern``/``alpha_pattern`` per module), so outputs equal PEFT's for the
same adapter (tested). LoRA variants that change the arithmetic (DoRA, aLoRA, biases, …) are refused at load.

Loading is in three steps: :func:`read_lora_files` checks the adapter against the model (``adapters.validate``'s
rules on the bank's table of module shapes, PEFT's config parser and target matching) and reads its files (blocking
I/O, any thread); :func:`build_lora_weights` converts its tensors and :meth:`LoraBank.install` makes it
usable (on the model's thread, between two forward passes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from adapters.validate import PEFT_PREFIX, WEIGHTS_FILE, AdapterFacts, ModuleShape, check_compatible
from wire.errors import AdapterConflict, AdapterInvalid

from ..errors import scrubbed


@dataclass(frozen=True)
class ModuleLora:
    a: torch.Tensor  # [r, in] (embedding: [r, num_embeddings])
    b: torch.Tensor  # [out, r] (embedding: [embedding_dim, r])
    scale: float
    embedding: bool = False


@dataclass
class LoraWeights:
    """One adapter's tensors, on the model's device and dtype, by adapted module name."""

    modules: dict[str, ModuleLora]
    rank: int
    vision: bool  # adapts the vision tower: applied in its request's own vision encoding
    parameter_bytes: int


@dataclass(frozen=True)
class LoraMapping:
    """Which adapter each part of a forward pass uses.

    ``uniform``: every input of the forward uses one adapter (a request's own prefill or vision encoding), or
    none. ``groups``: the batch rows of a decode step, by adapter: ``(adapter name, row indices)``; rows of no
    group run the base model.
    """

    uniform: str | None = None
    groups: tuple[tuple[str, torch.Tensor], ...] = ()

    @staticmethod
    def for_rows(adapters: list[str | None], device: torch.device | str) -> LoraMapping:
        names = {a for a in adapters}
        if len(names) == 1:
            return LoraMapping(uniform=adapters[0] if adapters else None)
        rows: dict[str, list[int]] = {}
        for i, a in enumerate(adapters):
            if a is not None:
                rows.setdefault(a, []).append(i)
        return LoraMapping(groups=tuple(
            (a, torch.tensor(idx, dtype=torch.long, device=device)) for a, idx in rows.items()
        ))

    @property
    def empty(self) -> bool:
        return self.uniform is None and not self.groups


_BASE = LoraMapping()


@dataclass
class _Hooked:
    handle: Any
    adapters: dict[str, ModuleLora] = field(default_factory=dict)


class LoraBank:
    """The adapters installed on one model, and the hooks that apply them per row. Mutated only between forward
    passes, by the thread that runs them."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.adapters: dict[str, LoraWeights] = {}
        self._hooks: dict[str, _Hooked] = {}
        self._current: LoraMapping = _BASE
        self._modules = dict(model.named_modules())
        self.shapes = {name: _shape(module) for name, module in self._modules.items() if name}
        visual = getattr(getattr(model, "model", None), "visual", None)
        self._vision_prefix = next((n + "." for n, m in model.named_modules() if m is visual), None) if visual else None
        # PEFT's LoraConfig (parsing adapter_config.json) is imported now, at startup, not in the first load.
        import peft.tuners.lora  # noqa: F401

    @contextlib.contextmanager
    def mapping(self, mapping: LoraMapping) -> Iterator[None]:
        previous, self._current = self._current, mapping
        try:
            yield
        finally:
            self._current = previous

    def is_vision_module(self, name: str) -> bool:
        return self._vision_prefix is not None and name.startswith(self._vision_prefix)

    # ---- install / remove (between forward passes) -----------------------------------------------------------
    def install(self, name: str, weights: LoraWeights) -> None:
        if name in self.adapters:
            raise AdapterConflict(f"an adapter named {name!r} is already loaded")
        done: list[str] = []
        try:
            for module_name, lora in weights.modules.items():
                hooked = self._hooks.get(module_name)
                if hooked is None:
                    module = self._modules[module_name]
                    handle = module.register_forward_hook(self._make_hook(module_name))
                    hooked = self._hooks[module_name] = _Hooked(handle)
                hooked.adapters[name] = lora
                done.append(module_name)
        except BaseException:
            self._detach(name, done)
            raise
        self.adapters[name] = weights

    def remove(self, name: str) -> None:
        weights = self.adapters.pop(name, None)
        if weights is not None:
            self._detach(name, list(weights.modules))

    def _detach(self, name: str, module_names: list[str]) -> None:
        for module_name in module_names:
            hooked = self._hooks.get(module_name)
            if hooked is None:
                continue
            hooked.adapters.pop(name, None)
            if not hooked.adapters:
                hooked.handle.remove()
                del self._hooks[module_name]

    def _make_hook(self, module_name: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            mapping = self._current
            if mapping.empty:
                return None
            adapters = self._hooks[module_name].adapters
            x = args[0]
            if mapping.uniform is not None:
                lora = adapters.get(mapping.uniform)
                return None if lora is None else output + _delta(lora, x)
            for adapter, rows in mapping.groups:
                lora = adapters.get(adapter)
                if lora is not None:  # (index_put_ with accumulate: the same sum, half the time of index_add_)
                    output.index_put_((rows,), _delta(lora, x.index_select(0, rows)), accumulate=True)
            return output

        return hook

    def hooked_modules(self) -> list[str]:
        """The modules that carry a LoRA hook now (those some installed adapter adapts)."""
        return sorted(self._hooks)


def _delta(lora: ModuleLora, x: torch.Tensor) -> torch.Tensor:
    """PEFT's arithmetic for one module: ``lora_B(lora_A(x)) * scaling`` (Linear) or its embedding form."""
    if lora.embedding:
        return (F.embedding(x, lora.a.T) @ lora.b.T) * lora.scale
    return F.linear(F.linear(x.to(lora.a.dtype), lora.a), lora.b) * lora.scale


# ----------------------------------------------------------------------------------------------------------------
# Loading: the adapter's files checked against this model, then its tensors.


def lora_config(facts: AdapterFacts) -> Any:
    """The adapter's ``LoraConfig`` as PEFT reads it; refused where it asks for a LoRA variant."""
    from peft import LoraConfig

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = LoraConfig.from_pretrained(str(facts.path))
    except Exception as exc:
        raise AdapterInvalid(f"adapter_config.json is not a valid LoRA config: {scrubbed(exc, facts.path)}",
                             detail=f"{facts.path}: {exc}") from None
    variants = _requested_variants(config)
    if variants:
        raise AdapterInvalid(f"LoRA variant {', '.join(variants)} is not supported: only plain LoRA adapters can be "
                             "served per request")
    return config


def read_lora_files(bank: LoraBank, facts: AdapterFacts) -> tuple[Any, dict[str, torch.Tensor]]:
    """Check the adapter against the model and read its tensors as stored (blocking file I/O, no computation: any
    thread). Returns its ``LoraConfig`` and the tensors by key."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from safetensors.torch import load_file

    config = lora_config(facts)
    check_compatible(facts, bank.shapes, targeted=lambda name: _targets(check_target_module_exists, config, name))
    try:
        raw = load_file(str(Path(facts.path) / WEIGHTS_FILE))
    except Exception as exc:
        raise AdapterInvalid(f"cannot read {WEIGHTS_FILE}: {scrubbed(exc, facts.path)}",
                             detail=f"{facts.path}: {exc}") from None
    return config, raw


def build_lora_weights(bank: LoraBank, facts: AdapterFacts, config: Any, raw: dict[str, torch.Tensor], *,
                       device: Any, dtype: torch.dtype) -> LoraWeights:
    """The adapter's tensors on the model's device and dtype, with PEFT's scaling per module (the model's thread:
    converting and checking large tensors runs parallel torch operations)."""
    from peft.utils.other import get_pattern_key

    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        module, _, kind = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        kind = kind.removesuffix(".weight")
        tensors.setdefault(module, {})[kind] = value
    modules: dict[str, ModuleLora] = {}
    parameter_bytes = 0
    for name, spec in facts.modules.items():
        parts = tensors.get(name, {})
        a, b = (parts.get("embedding_A"), parts.get("embedding_B")) if spec.embedding else (parts.get("A"),
                                                                                           parts.get("B"))
        if a is None or b is None:
            raise AdapterInvalid(f"{WEIGHTS_FILE}: module {name} lacks its LoRA A/B pair")
        rank = int(a.shape[0])
        r_key = get_pattern_key(config.rank_pattern.keys(), name)
        alpha_key = get_pattern_key(config.alpha_pattern.keys(), name)
        expected = config.rank_pattern.get(r_key, config.r)
        if rank != expected:
            raise AdapterInvalid(f"{WEIGHTS_FILE}: module {name} has rank {rank}, the config says {expected}")
        alpha = config.alpha_pattern.get(alpha_key, config.lora_alpha)
        scale = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        a = a.to(device=device, dtype=dtype).contiguous()
        b = b.to(device=device, dtype=dtype).contiguous()
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterInvalid(f"{WEIGHTS_FILE}: module {name} holds non-finite weights (NaN or infinity)")
        modules[name] = ModuleLora(a, b, float(scale), spec.embedding)
        parameter_bytes += a.numel() * a.element_size() + b.numel() * b.element_size()
    return LoraWeights(
        modules=modules, rank=facts.rank, vision=any(bank.is_vision_module(n) for n in modules),
        parameter_bytes=parameter_bytes,
    )


def _requested_variants(config: Any) -> list[str]:
    """The LoRA variants (DoRA, aLoRA, special initialisations that change the forward) a config asks for."""
    out = []
    for f in dataclasses.fields(config):
        if f.name == "init_lora_weights":
            if config.init_lora_weights in f.metadata.get("lora_variants", ()):
                out.append(f"init_lora_weights={config.init_lora_weights!r}")
        elif f.metadata.get("is_lora_variant") and getattr(config, f.name):
            out.append(f.name)
    return out


def _targets(check: Any, config: Any, name: str) -> bool:
    try:
        return bool(check(config, name))
    except Exception:
        return False


def _shape(module: Any) -> ModuleShape:
    name = type(module).__name__
    if isinstance(module, torch.nn.Linear):
        return ModuleShape("linear", module.in_features, module.out_features, name)
    if isinstance(module, torch.nn.Embedding):
        return ModuleShape("embedding", module.num_embeddings, module.embedding_dim, name)
    return ModuleShape("other", type_name=name)
