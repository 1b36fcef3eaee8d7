"""Builders of local, random-weight checkpoints and LoRA adapters: the offline demo, the tests and the benchmarks.

Nothing here touches the network. Every checkpoint is written with ``save_pretrained`` and is meant to be loaded
back through the same ``from_pretrained`` path a real model takes, so the demo exercises the production code.
The weights are random: whatever such a model writes is meaningless text.

- :func:`build_vl_checkpoint` (sizes in :data:`VL_SIZES`: ``tiny``, ``mid``, ``2b``) and :func:`build_text_checkpoint`:
  a model with its tokenizer (:func:`build_tokenizer`), processor and chat template.
- :func:`build_lora_adapter`: a random adapter written by PEFT on the loaded model (:func:`load_for_building` loads
  a checkpoint once for several adapters).
- :func:`write_config_adapter`: a random adapter written from ``config.json`` alone, with no model in memory.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bump when a builder changes what it writes, so cached demo checkpoints are rebuilt.
BUILDER_VERSION = 4

# Qwen's special tokens, in Qwen's order (their ids follow the BPE vocabulary, as in the real tokenizer).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A Qwen3-VL-style chat template: ChatML turns, one <|vision_start|><|image_pad|><|vision_end|> per image part.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_CORPUS_LINES = [
    "The process starts when a customer submits an order.",
    "A clerk checks the order and the manager approves the payment.",
    "If the stock is low, the warehouse sends a request to the supplier.",
    "| Step | Role | Action |",
    "|------|------|--------|",
    "| 1 | Customer | Submit order |",
    "| 2 | Clerk | Validate order |",
    "| 3 | Manager | Approve payment |",
    "Start event, task, gateway, end event, sequence flow, pool and lane.",
    "The flowchart has a decision: yes goes to shipping, no goes back to review.",
    "Процесс начинается, когда клиент отправляет заказ.",
    "Менеджер проверяет заявку и утверждает оплату.",
    "Привет! Ты полезный ассистент. Опиши диаграмму.",
    "| Шаг | Роль | Действие |",
    "流程从客户提交订单开始。经理审批付款。",
    "图表显示了三个步骤和两个角色。",
    "Done ✅ 🚀 📦 → ⬇️ ⚠️ 🙂",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2026.",
    "def describe(diagram): return steps, roles, flows",
    "Diagram: BPMN 2.0, swimlanes, exclusive gateway, parallel gateway, message flow.",
]


def _corpus(repeat: int = 20) -> Iterator[str]:
    rng = random.Random(0)
    for _ in range(repeat):
        lines = list(_CORPUS_LINES)
        rng.shuffle(lines)
        yield "\n".join(lines)


@dataclass(frozen=True)
class VLSize:
    """Shape of a random Qwen3-VL checkpoint."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    intermediate: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    mrope_section: tuple[int, int, int]
    deepstack: tuple[int, ...]
    vocab_size: int | None = None  # None: the tokenizer's size rounded up to a multiple of 64
    tie_word_embeddings: bool = True


VL_SIZES: dict[str, VLSize] = {
    # ~0.3M parameters: tests and the offline demo. head_dim 32: the smallest vLLM's CPU attention accepts, so the
    # same demo runs on both engines (2 query heads share 1 KV head: grouped-query attention as in the real model).
    "tiny": VLSize(64, 2, 2, 1, 32, 128, 2, 32, 2, 64, (8, 4, 4), (0, 1)),
    # ~100M parameters: the mid-size benchmark model.
    "mid": VLSize(768, 12, 12, 4, 64, 3072, 4, 256, 4, 1024, (16, 8, 8), (1, 2, 3)),
    # The real Qwen3-VL-2B-Instruct architecture (random bf16 weights, ~4.3 GB).
    "2b": VLSize(2048, 28, 16, 8, 128, 6144, 24, 1024, 16, 4096, (24, 20, 20), (5, 11, 17), vocab_size=151936),
}




def build_tokenizer(vocab_size: int = 1200, extra_tokens: int = 0) -> Any:
    """Train a small byte-level BPE with Qwen's pre-tokenizer and wrap it as a Qwen2Tokenizer.

    ``extra_tokens`` pads the vocabulary with plain added tokens (``tok00042``) so that a model with a real-size
    embedding (the 2B architecture) decodes every id it can produce into text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_corpus(), trainer)
    model_json = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]  # tuples, as it needs
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in SPECIAL_TOKENS[1:]]}
    )
    if extra_tokens:
        tokenizer.add_tokens([f" tok{i:05d}" for i in range(extra_tokens)])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 32768
    return tokenizer


def _special_ids(tokenizer: Any) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None or (i == tokenizer.unk_token_id and t != "<|endoftext|>")]
    if missing:
        raise RuntimeError(f"tokenizer lacks special tokens {missing}")
    return ids


def _finish_generation_config(model: Any, ids: dict[str, int]) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )


def build_vl_checkpoint(
    out_dir: Path | str,
    size: str = "tiny",
    *,
    seed: int = 0,
    initializer_range: float = 1.0,
    dtype: str = "float32",
    max_pixels: int = 512 * 512,
) -> Path:
    """Write a random-weight Qwen3-VL checkpoint with tokenizer, processor and chat template to ``out_dir``."""
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    spec = VL_SIZES[size]
    out = Path(out_dir)
    tokenizer = build_tokenizer(extra_tokens=0)
    if spec.vocab_size is not None:
        pad = spec.vocab_size - len(tokenizer)
        tokenizer = build_tokenizer(extra_tokens=max(0, pad))
    ids = _special_ids(tokenizer)
    vocab_size = spec.vocab_size or len(tokenizer)
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=spec.text_hidden,
            intermediate_size=spec.intermediate,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads,
            head_dim=spec.head_dim,
            max_position_embeddings=32768,
            initializer_range=initializer_range,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": list(spec.mrope_section),
                "mrope_interleaved": True,
            },
            tie_word_embeddings=spec.tie_word_embeddings,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=spec.vision_depth,
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_intermediate,
            num_heads=spec.vision_heads,
            out_hidden_size=spec.text_hidden,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=2304,
            deepstack_visual_indexes=list(spec.deepstack),
            initializer_range=initializer_range,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    with _default_dtype(torch_dtype):
        model = Qwen3VLForConditionalGeneration(config)
    model.eval()
    _quiet_unprintable_tokens(model, tokenizer)
    _finish_generation_config(model, ids)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 64 * 64, "longest_edge": max_pixels},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 64 * 64, "longest_edge": max_pixels},
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_text_checkpoint(out_dir: Path | str, *, seed: int = 0, initializer_range: float = 1.0) -> Path:
    """Write a tiny random-weight text-only Qwen3 causal LM with tokenizer and chat template to ``out_dir``."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    ids = _special_ids(tokenizer)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=32768,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.eval()
    _quiet_unprintable_tokens(model, tokenizer)
    _finish_generation_config(model, ids)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _quiet_unprintable_tokens(model: Any, tokenizer: Any, scale: float = 0.05) -> None:
    """Shrink the (tied) embeddings of tokens that decode to partial UTF-8 or control characters.

    A random model otherwise picks lone bytes as often as words and writes mostly U+FFFD; with them shrunk it
    writes a readable (still meaningless) word salad, which is what a demo and a screenshot should show.
    """
    import torch

    embeddings = model.get_input_embeddings().weight
    vocab = min(len(tokenizer), embeddings.shape[0])
    with torch.no_grad():
        for token_id in range(vocab):
            text = tokenizer.decode([token_id])
            if not text or "\ufffd" in text or any(ord(c) < 32 and c not in "\n\t" for c in text):
                embeddings[token_id].mul_(scale)


class _default_dtype:
    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        import torch

        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_default_dtype(self.previous)


# LoRA targets that hit only the language model, and every linear layer (the vision tower too).
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def build_lora_adapter(
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    seed: int,
    rank: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] | str = TEXT_TARGETS,
    init_scale: float = 1.0,
    model: Any = None,
) -> Path:
    """Write a random (non-zero) LoRA adapter for the checkpoint in ``model_dir`` to ``out_dir`` (safetensors).

    ``model`` may be passed to reuse an already-loaded base model; it is not modified.
    """
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    base = model
    if base is None:
        base = load_for_building(model_dir)
    else:
        base = copy.deepcopy(base)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, config)
    if init_scale != 1.0:
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.mul_(init_scale)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    # Record the base model as a name users recognise, not this machine's path.
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = AutoConfig.from_pretrained(model_dir).model_type + ":" + Path(model_dir).name
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def load_for_building(model_dir: Path | str) -> Any:
    """The model in ``model_dir``, loaded to write adapters on (pass it as :func:`build_lora_adapter`'s ``model``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_dir)
    cls = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    return cls.from_pretrained(model_dir, dtype="auto")



def _text_config(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The language model's config and the module prefix PEFT uses for its layers."""
    if "text_config" in config:  # Qwen3-VL: model.language_model.layers.N
        return config["text_config"], "base_model.model.model.language_model.layers"
    return config, "base_model.model.model.layers"  # a text-only causal LM (Qwen3)


def adapter_shapes(model_dir: Path, targets: Sequence[str] = TEXT_TARGETS) -> dict[str, tuple[int, int]]:
    """``module name → (in_features, out_features)`` of the attention projections ``targets`` names."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    text, prefix = _text_config(config)
    hidden = int(text["hidden_size"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    dims = {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
    }
    unknown = sorted(set(targets) - set(dims))
    if unknown:
        raise ValueError(f"config-only adapters support {sorted(dims)}, not {unknown}")
    return {
        f"{prefix}.{layer}.self_attn.{proj}": dims[proj]
        for layer in range(int(text["num_hidden_layers"]))
        for proj in targets
    }


def write_config_adapter(model_dir: Path, out_dir: Path, *, seed: int, rank: int = 16, alpha: int = 32,
                         targets: Sequence[str] = TEXT_TARGETS, dtype: str = "float32") -> Path:
    """Write a random, non-zero LoRA adapter for ``model_dir`` from its ``config.json`` alone.

    Same files as PEFT writes: ``adapter_model.safetensors`` with ``<module>.lora_A.weight`` (rank × in) and
    ``<module>.lora_B.weight`` (out × rank) in float32 (PEFT's default adapter dtype), and the
    ``adapter_config.json`` of a ``LoraConfig``. A 2B-architecture rank-16 q,k,v,o adapter is 25.7 MB.
    """
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    tensors = {}
    for module, (fan_in, fan_out) in adapter_shapes(model_dir, targets).items():
        a = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
        b = torch.randn(fan_out, rank, generator=generator) * (0.5 / rank**0.5)
        tensors[f"{module}.lora_A.weight"] = a.to(torch_dtype).contiguous()
        tensors[f"{module}.lora_B.weight"] = b.to(torch_dtype).contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((Path(model_dir) / "config.json").read_text())
    LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, task_type="CAUSAL_LM",
        inference_mode=True, init_lora_weights=False,
        base_model_name_or_path=f"{config.get('model_type', 'model')}:{Path(model_dir).name}",
    ).save_pretrained(str(out))
    return out
