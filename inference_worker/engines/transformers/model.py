"""The model: loading through the real ``from_pretrained`` path, and turning a request into model inputs.

:func:`load_model` is what users run on ``Qwen/Qwen3-VL-2B-Instruct`` and what the tests run on checkpoints the
project builds itself. :meth:`LoadedModel.prepare` (chat template, image preprocessing, tokenization, Qwen3-VL's
M-RoPE positions) runs on the scheduler thread, like every torch computation of the engine (``scheduler.py`` says
why), between two decode steps.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from wire.errors import ImagesNotSupported, PromptTooLong

from ..base import ChatTurn, ModelInfo
from ..capabilities import model_capabilities

log = logging.getLogger(__name__)


def pick_device(requested: str) -> str:
    """The device to run on: the requested one when it is available, else CPU (with a warning)."""
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return "cuda" if available["cuda"] else "mps" if available["mps"] else "cpu"
    if not available.get(requested, False):
        log.warning("DEVICE=%s is not available here; falling back to cpu", requested)
        return "cpu"
    return requested


def pick_dtype(requested: str, device: str) -> Any:
    """The torch dtype: ``auto`` is one that works and is fast on the device."""
    import torch

    if requested != "auto":
        dtype = getattr(torch, requested)
        if device == "cpu" and dtype == torch.float16:
            log.warning("float16 is slow and poorly supported on CPU; using it anyway as TORCH_DTYPE asks")
        return dtype
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def _is_vision_model(config: Any) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


@dataclass
class Prepared:
    """One request's model inputs, on the model's device, ready for its prefill."""

    input_ids: Any  # [1, P]
    model_inputs: dict[str, Any]  # everything else the prefill forward takes (images, masks, M-RoPE positions)
    rope_delta: int  # Qwen3-VL: M-RoPE position minus sequence position for every generated token
    image_key: str | None  # digest of the request's images: equal keys ⇒ equal vision encodings
    image_tokens: int

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


class LoadedModel:
    """A base model (Qwen3-VL, or a text-only causal LM) with its processor or tokenizer."""

    def __init__(self, model: Any, processor: Any, tokenizer: Any, info: ModelInfo, *, image_min_pixels: int,
                 image_max_pixels: int, max_prompt_tokens: int, weight_layout: str = "natural") -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.info = info
        self.image_min_pixels = image_min_pixels
        self.image_max_pixels = image_max_pixels
        self.max_prompt_tokens = max_prompt_tokens
        self.weight_layout = weight_layout  # "natural", or "transposed" (CPU_WEIGHT_LAYOUT, applied by load_model)
        gen = getattr(model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        self.eos_ids = frozenset(e for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
        self.capabilities = model_capabilities(vision=info.vision, tokenizer=tokenizer,
                                               generation_config=gen.to_dict() if gen is not None else None)
        text_config = model.config.get_text_config()
        self.num_layers = int(text_config.num_hidden_layers)
        self.kv_heads = int(getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads)
        self.head_dim = int(getattr(text_config, "head_dim", None)
                            or text_config.hidden_size // text_config.num_attention_heads)
        layer_types = getattr(text_config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise ValueError(
                f"{info.name}: layers other than full attention ({sorted(set(layer_types))}) are not supported by the "
                "batched engine"
            )

    @property
    def device(self) -> Any:
        return self.model.device

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token over all layers."""
        import torch

        element = torch.finfo(self.dtype).bits // 8
        return 2 * self.num_layers * self.kv_heads * self.head_dim * element

    # ---- prompts ---------------------------------------------------------------------------------------------
    def prepare(self, turns: tuple[ChatTurn, ...]) -> Prepared:
        """Chat template + images → the prefill's inputs on the device (the scheduler thread)."""
        import torch

        if self.info.vision:
            inputs, images = self._prepare_vision(turns)
        else:
            if any(t.images for t in turns):  # the validator refuses this first; kept as the engine's own guard
                raise ImagesNotSupported(f"{self.info.name} is a text-only model: it cannot read images")
            messages = [{"role": t.role, "content": t.text} for t in turns]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = dict(self.tokenizer([text], return_tensors="pt", add_special_tokens=False))
            images = []
        input_ids = inputs.pop("input_ids")
        length = int(input_ids.shape[1])
        if length > self.max_prompt_tokens:
            raise PromptTooLong(
                f"prompt is {length} tokens (images included), over the limit of {self.max_prompt_tokens}",
            )
        rope_delta = 0
        image_tokens = 0
        if self.info.vision:
            positions, deltas = self.model.model.get_rope_index(
                input_ids, inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
                attention_mask=inputs.get("attention_mask"),
            )
            rope_delta = int(deltas.reshape(-1)[0])
            # [4, 1, P]: the sequence positions (for the mask), then the three M-RoPE axes.
            inputs["position_ids"] = torch.cat([torch.arange(length).view(1, 1, -1), positions], dim=0)
            image_tokens = int((inputs["mm_token_type_ids"] != 0).sum())
        else:
            inputs["position_ids"] = torch.arange(length).view(1, -1)
        device = self.device
        moved = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        if "pixel_values" in moved:
            moved["pixel_values"] = moved["pixel_values"].to(self.dtype)
        return Prepared(input_ids.to(device), moved, rope_delta, _images_key(images), image_tokens)

    def _prepare_vision(self, turns: tuple[ChatTurn, ...]) -> tuple[dict[str, Any], list[Any]]:
        from qwen_vl_utils import process_vision_info

        messages = []
        for turn in turns:
            content: list[dict[str, Any]] = [
                {"type": "image", "image": img, "min_pixels": self.image_min_pixels,
                 "max_pixels": self.image_max_pixels}
                for img in turn.images
            ]
            if turn.text or not content:
                content.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": content})
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        patch = getattr(self.processor.image_processor, "patch_size", 16)
        images, _videos = process_vision_info(messages, image_patch_size=patch)
        inputs = self.processor(text=[text], images=images, return_tensors="pt", do_resize=False)
        return dict(inputs), list(images or [])


def _images_key(images: list[Any]) -> str | None:
    """A digest of the (resized) images of a request: the vision encoder's whole input besides its settings."""
    if not images:
        return None
    h = hashlib.blake2b(digest_size=16)
    for img in images:
        h.update(f"{img.mode}:{img.size[0]}x{img.size[1]};".encode())
        h.update(img.tobytes())
    return h.hexdigest()


def load_model(name: str, *, device: str = "auto", dtype: str = "auto", image_min_pixels: int = 64 * 64,
               image_max_pixels: int = 1024 * 32 * 32, max_prompt_tokens: int = 16384,
               cpu_weight_layout: str = "natural") -> LoadedModel:
    """Load ``name`` (hub id or directory) with ``from_pretrained``: the path real and demo models share.

    ``cpu_weight_layout`` (CPU only): ``natural`` keeps the weights as loaded; ``transposed`` stores the MLP and output
    layer weights transposed, which is faster with four or more running rows and slower with two or three
    (see :func:`_transpose_wide_weights`).
    """
    if cpu_weight_layout not in ("natural", "transposed"):
        raise ValueError(f"cpu_weight_layout must be natural or transposed, not {cpu_weight_layout!r}")
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    started = time.perf_counter()
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    config = AutoConfig.from_pretrained(name)
    vision = _is_vision_model(config)
    model_cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    log.info("loading %s (%s) on %s as %s", name, config.model_type, device, str(torch_dtype).replace("torch.", ""))
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device == "cuda":
        kwargs["device_map"] = "cuda"
    model = model_cls.from_pretrained(name, **kwargs)
    if device != "cuda":
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    model.requires_grad_(False)
    if vision:
        processor = AutoProcessor.from_pretrained(name)
        tokenizer = processor.tokenizer
    else:
        processor = None
        tokenizer = AutoTokenizer.from_pretrained(name)
    _install_lm_head_fix(model)
    transposed = _transpose_wide_weights(model) if device == "cpu" and cpu_weight_layout == "transposed" else 0
    if transposed:
        log.info("CPU weight layout: %d MLP and output matrices transposed (CPU_WEIGHT_LAYOUT)", transposed)
    info = ModelInfo(
        name=name,
        model_type=config.model_type,
        device=device,
        dtype=str(torch_dtype).replace("torch.", ""),
        vision=vision,
        load_seconds=time.perf_counter() - started,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    log.info("model loaded in %.2f s (%d parameters)", info.load_seconds, info.parameters)
    return LoadedModel(model, processor, tokenizer, info, image_min_pixels=image_min_pixels,
                       image_max_pixels=image_max_pixels, max_prompt_tokens=max_prompt_tokens,
                       weight_layout="transposed" if transposed else "natural")


WIDE_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _transpose_wide_weights(model: Any) -> int:
    """Store the language model's MLP and output-layer weights transposed (the same values, the same memory).

    ``F.linear(x, W)`` multiplies by ``Wᵀ``; with ``W`` a transposed view of a contiguous ``Wᵀ``, MKL gets a plain
    (not transposed) right-hand matrix. Its kernels then trade small batches for large ones, on the wide matrices
    only (measured side by side on this kind of 2-core CPU, 116M benchmark model, ms per decode step with the
    layout natural → transposed): 1 row 26 → 25, 2 rows 31 → 42, 4 rows 51 → 43, 8 rows 57 → 50, 16 rows 67 → 63;
    the 2B model's 2048×6144 MLP matrices and its 151936-row output layer the same way. The attention projections
    are left as they are: they are faster natural at every batch size. Only float32 weights with MKL (x86): in
    bfloat16 (oneDNN's kernels) the transposed layout is slower at every batch size (2B output layer, 1 row: 62 →
    126 ms); the vision tower (prefill only, many rows) is never changed.
    """
    import torch

    if not torch.backends.mkl.is_available():
        return 0
    count = 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    visual = getattr(getattr(model, "model", None), "visual", None)
    skip = {id(p) for p in visual.parameters()} if visual is not None else set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or id(module.weight) in skip:
            continue
        if module is head or name.rsplit(".", 1)[-1] in WIDE_PROJECTIONS:
            weight = module.weight
            if weight.dtype == torch.float32 and weight.is_contiguous():
                weight.data = weight.data.t().contiguous().t()
                count += 1
    return count


def _install_lm_head_fix(model: Any) -> None:
    """Feed ``lm_head`` a contiguous copy of its input.

    With frozen base weights (as for LoRA serving), the last-token slice fed to a frozen, tied ``lm_head`` takes a
    slow matmul path that copies the whole weight on every call (measured: 2B time to first token 2 s → 6 s on CPU).
    A contiguous clone of the (tiny) input restores the fast path; ``.contiguous()`` does not.
    """
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return

    def _contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])

    head.register_forward_pre_hook(_contiguous_input)
