"""The checkpoint as the vLLM engine knows it without loading it (no torch model in this process): its config,
generation config, tensor shapes; and vLLM's engine arguments for it (the benchmark's plain AsyncLLM uses the same)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.validate import ModuleShape, read_safetensors_header

if TYPE_CHECKING:
    from ...config import Settings


@dataclass(frozen=True)
class ModelFiles:
    """What the engine needs to know about the checkpoint without loading it: config, weight shapes, tokenizer."""

    directory: Path
    config: dict[str, Any]
    weights: dict[str, list[int]]  # checkpoint tensor name → shape

    @property
    def text_config(self) -> dict[str, Any]:
        return dict(self.config.get("text_config") or self.config)

    @property
    def vision(self) -> bool:
        return "vision_config" in self.config

    @property
    def parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.weights.values())

    @property
    def image_factor(self) -> int:
        """Pixels per side of one image token: the vision tower's patch times its spatial merge."""
        vision = self.config.get("vision_config") or {}
        return int(vision.get("patch_size", 16)) * int(vision.get("spatial_merge_size", 2))

    def generation_config(self) -> dict[str, Any] | None:
        path = self.directory / "generation_config.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def kv_bytes_per_token(self, element_bytes: int) -> int:
        t = self.text_config
        heads = int(t.get("num_attention_heads", 1))
        head_dim = int(t.get("head_dim") or int(t.get("hidden_size", 0)) // max(heads, 1))
        kv_heads = int(t.get("num_key_value_heads") or heads)
        return 2 * int(t.get("num_hidden_layers", 0)) * kv_heads * head_dim * element_bytes

    def module_shapes(self) -> dict[str, ModuleShape]:
        """The checkpoint's modules as an adapter sees them (``adapters.validate.check_compatible``): a module with a
        2-D weight is a linear ``out × in`` (an embedding table looks the same here, and this engine serves no
        embedding adapters); other weights belong to modules no adapter can adapt."""
        shapes = {}
        for key, shape in self.weights.items():
            if key.endswith(".weight"):
                module = key.removesuffix(".weight")
                if len(shape) == 2:
                    shapes[module] = ModuleShape("linear", in_features=shape[1], out_features=shape[0])
                else:
                    shapes[module] = ModuleShape("other", type_name=f"a weight of shape {shape}")
        return shapes


def read_model_files(name: str) -> ModelFiles:
    """The checkpoint's config and tensor shapes (safetensors headers only), from a directory or the HF cache."""
    directory = Path(name).expanduser()
    if not directory.is_dir():
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    weights: dict[str, list[int]] = {}
    for path in sorted(directory.glob("*.safetensors")):
        for key, entry in read_safetensors_header(path).items():
            weights[key] = list(entry["shape"])
    return ModelFiles(directory, config, weights)


def engine_kwargs(settings: Settings, files: ModelFiles, device: str) -> dict[str, Any]:
    """vLLM's ``AsyncEngineArgs`` from the settings (the benchmark's plain AsyncLLM uses the same)."""
    dtype = settings.torch_dtype
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "auto"
    max_len = settings.vllm_max_model_len or settings.max_prompt_tokens + settings.max_new_tokens
    model_max = files.text_config.get("max_position_embeddings")
    if model_max:
        max_len = min(max_len, int(model_max))
    return dict(
        model=str(files.directory),
        dtype=dtype,
        max_model_len=max_len,
        max_num_seqs=settings.batch_rows_for(device),
        enable_lora=True,
        max_loras=settings.vllm_max_loras,
        max_lora_rank=settings.vllm_max_lora_rank,
        max_cpu_loras=max(settings.max_loaded_adapters + 1, settings.vllm_max_loras),
        enable_tower_connector_lora=settings.vllm_tower_lora,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        enforce_eager=settings.vllm_enforce_eager,
        limit_mm_per_prompt={"image": settings.max_images_per_request, "video": 0} if files.vision else None,
        mm_processor_kwargs={"size": {"shortest_edge": settings.image_min_pixels,
                                      "longest_edge": settings.image_max_pixels}} if files.vision else None,
        disable_log_stats=True,
        seed=0,
    )
