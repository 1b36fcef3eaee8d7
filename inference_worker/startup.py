"""The engine INFERENCE_ENGINE names, built and loaded off the event loop (the service's start calls it once)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .config import Settings
from .engines.base import StepStats
from .metrics import Metrics

if TYPE_CHECKING:
    from .engines.base import Engine
    from .engines.transformers.model import LoadedModel


async def load_engine(settings: Settings, model_name: str, metrics: Metrics) -> Engine:
    """transformers (in process), vllm (AsyncLLM, its engine core in a process of its own) or ray (a front over the
    replicas of a Ray Serve deployment, which hold the model)."""
    if settings.engine == "vllm":
        from .engines.vllm import VllmEngine

        return await VllmEngine.start(settings, model_name)
    if settings.engine == "ray":
        from .ray.engine import RayEngine

        return await RayEngine.connect(settings)
    return await _load_transformers_engine(settings, model_name, metrics)


async def _load_transformers_engine(settings: Settings, model_name: str, metrics: Metrics) -> Engine:
    """The transformers engine, with its model loaded on the engine's own thread."""
    from .engines.transformers import TransformersEngine
    from .engines.transformers.model import load_model, pick_device

    s = settings

    def load() -> LoadedModel:
        device = pick_device(s.device)
        return load_model(model_name, device=device, dtype=s.torch_dtype,
                          image_min_pixels=s.image_min_pixels, image_max_pixels=s.image_max_pixels,
                          max_prompt_tokens=s.max_prompt_tokens, cpu_weight_layout=s.weight_layout_for(device))

    def observe(stats: StepStats) -> None:
        """Metrics of one engine step (called on the engine's thread; the Prometheus client is thread-safe)."""
        metrics.step_seconds.labels(stats.kind).observe(stats.seconds)
        if stats.kind == "decode":
            metrics.batch_rows.observe(stats.rows)
        for gap in stats.inter_token_s:
            metrics.inter_token.observe(gap)

    def options(lm: LoadedModel) -> dict[str, Any]:
        device = lm.info.device
        return {"max_running": s.batch_rows_for(device), "kv_cache_max_bytes": kv_cache_bound(s, device),
                "vision_cache_max_bytes": s.vision_cache_max_bytes, "on_step": observe}

    return await asyncio.wrap_future(TransformersEngine.launch(load, options))


def kv_cache_bound(settings: Settings, device: str) -> int:
    """KV_CACHE_MAX_BYTES, or its default: 2 GiB on CPU and MPS, half the free GPU memory on CUDA."""
    if settings.kv_cache_max_bytes is not None:
        return settings.kv_cache_max_bytes
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return max(free // 2, 64 << 20)
    return 2 << 30
