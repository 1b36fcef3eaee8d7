"""Checks of a PEFT LoRA adapter directory that need no model: config, safetensors header, tensor shapes.

Only the safetensors header is read (a little-endian u64 length, then JSON): no tensor is materialised and no
pickle is ever opened. The model-dependent checks (do these modules exist in *this* model, with these shapes?)
live in the worker (``inference_worker.lora``).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.errors import AdapterIncompatible, AdapterInvalid, AdapterNotFound

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
# Files an adapter may carry beside its weights (tokenizer, processor, chat template, docs).
OPTIONAL_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "preprocessor_config.json",
        "processor_config.json",
        "video_preprocessor_config.json",
        "generation_config.json",
        "README.md",
    }
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_HEADER_BYTES = 100 * 1024 * 1024
_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$|^(?P<emodule>.+)\.(?P<ekind>lora_embedding_[AB])$"
)
PEFT_PREFIX = "base_model.model."  # of every module name in an adapter's weights (PEFT's wrapper)
# LoraConfig fields that change what an adapter computes beyond plain LoRA: the engines refuse them, with the field
# named.
REFUSED_CONFIG_FIELDS = ("use_dora", "lora_bias", "target_parameters", "layer_replication", "trainable_token_indices",
                         "use_qalora", "megatron_config", "alora_invocation_tokens", "arrow_config", "modules_to_save",
                         "target_modules_to_tie", "fan_in_fan_out")


def check_targets(facts: AdapterFacts, targeted: set[str]) -> None:
    """An adapter's ``target_modules`` and its weights agree. ``targeted``: the model's modules that target_modules
    select, by the engine's matching rule (PEFT's). Refused: no module selected; selected modules without weights
    (they would load as silent no-ops); weights for modules outside the selection."""
    if not targeted:
        raise AdapterIncompatible(f"none of target_modules {facts.target_modules} exist in this model")
    untrained = sorted(targeted - set(facts.modules))
    if untrained:
        raise AdapterIncompatible(
            f"target_modules select {len(untrained)} modules with no weights in the adapter (e.g. {untrained[0]}): "
            "they would load as no-ops"
        )
    stray = sorted(set(facts.modules) - targeted)
    if stray:
        raise AdapterIncompatible(f"the weights adapt modules outside target_modules (e.g. {stray[0]})")


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: ``in_features`` × ``out_features`` with a rank-``rank`` update."""

    in_features: int
    out_features: int
    rank: int
    embedding: bool = False


@dataclass(frozen=True)
class AdapterFacts:
    path: Path
    config: dict[str, Any]
    rank: int
    alpha: float
    target_modules: list[str]
    base_model: str | None
    peft_version: str | None
    modules: dict[str, LoraModule] = field(repr=False)
    tensor_bytes: int
    extra_files: tuple[str, ...] = ()


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and check a safetensors header: JSON, known entries, offsets that tile the file exactly."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise AdapterInvalid(f"{path.name}: corrupt safetensors (file too short)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise AdapterInvalid(f"{path.name}: corrupt safetensors (header length {header_len} is impossible)")
            header = json.loads(f.read(header_len))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterInvalid(f"{path.name}: corrupt safetensors ({exc})") from None
    if not isinstance(header, dict):
        raise AdapterInvalid(f"{path.name}: corrupt safetensors (header is not an object)")
    header.pop("__metadata__", None)
    ends = []
    for key, entry in header.items():
        try:
            start, end = entry["data_offsets"]
            shape = entry["shape"]
            dtype = entry["dtype"]
        except (TypeError, KeyError, ValueError):
            raise AdapterInvalid(f"{path.name}: corrupt safetensors (bad entry for {key!r})") from None
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise AdapterInvalid(f"{path.name}: corrupt safetensors (bad offsets for {key!r})")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise AdapterInvalid(f"{path.name}: corrupt safetensors (bad shape for {key!r})")
        if not isinstance(dtype, str):
            raise AdapterInvalid(f"{path.name}: corrupt safetensors (bad dtype for {key!r})")
        ends.append((start, end))
    ends.sort()
    cursor = 0
    for start, end in ends:
        if start != cursor:
            raise AdapterInvalid(f"{path.name}: corrupt safetensors (tensor data is not contiguous)")
        cursor = end
    if 8 + header_len + cursor != size:
        raise AdapterInvalid(
            f"{path.name}: corrupt or truncated safetensors ({size} bytes on disk, header describes "
            f"{8 + header_len + cursor})"
        )
    return header


def _module_name(key: str) -> tuple[str, str] | None:
    m = _KEY.match(key)
    if m is None:
        return None
    module = m.group("module") or m.group("emodule")
    kind = m.group("kind") or m.group("ekind")
    if module.startswith(PEFT_PREFIX):
        module = module[len(PEFT_PREFIX) :]
    return module, kind


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise AdapterInvalid(f"missing {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterInvalid(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterInvalid(f"{CONFIG_FILE} must hold a JSON object")
    return config


def _check_config(config: dict[str, Any]) -> tuple[int, float, list[str]]:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterInvalid(f"only LoRA adapters are supported, this one is {config.get('peft_type')!r}")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterInvalid(f"{CONFIG_FILE}: r must be a positive integer, got {rank!r}")
    alpha = config.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise AdapterInvalid(f"{CONFIG_FILE}: lora_alpha must be a number, got {alpha!r}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        target_list = [targets]
    elif isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        target_list = sorted(targets)
    else:
        raise AdapterInvalid(f"{CONFIG_FILE}: target_modules must be a module name list or pattern, got {targets!r}")
    if config.get("use_dora"):
        raise AdapterInvalid("DoRA adapters are not supported: per-request adapter selection needs plain LoRA")
    if config.get("modules_to_save"):
        raise AdapterInvalid(
            f"adapters with modules_to_save ({config['modules_to_save']}) are not supported: they replace whole "
            "modules of the shared model"
        )
    return rank, float(alpha), target_list


def inspect_adapter(directory: Path | str) -> AdapterFacts:
    """Validate a PEFT LoRA directory without a model. Raises AdapterNotFound / AdapterInvalid."""
    path = Path(directory)
    if not path.is_dir():
        raise AdapterNotFound(f"adapter directory {path} does not exist")
    config = read_config(path)
    rank, alpha, targets = _check_config(config)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise AdapterInvalid(
                f"pickle-only adapter refused ({', '.join(pickles)}): only {WEIGHTS_FILE} is loaded; "
                "re-save with safe_serialization=True"
            )
        raise AdapterInvalid(f"missing {WEIGHTS_FILE}")
    header = read_safetensors_header(weights)
    if not header:
        raise AdapterInvalid(f"{WEIGHTS_FILE} holds no tensors")
    shapes: dict[str, dict[str, list[int]]] = {}
    tensor_bytes = 0
    for key, entry in header.items():
        parsed = _module_name(key)
        if parsed is None:
            raise AdapterInvalid(f"{WEIGHTS_FILE}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        module, kind = parsed
        shapes.setdefault(module, {})[kind] = entry["shape"]
        tensor_bytes += entry["data_offsets"][1] - entry["data_offsets"][0]
    rank_pattern = config.get("rank_pattern") or {}
    modules: dict[str, LoraModule] = {}
    for module, kinds in sorted(shapes.items()):
        embedding = "lora_embedding_A" in kinds or "lora_embedding_B" in kinds
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
        if set(kinds) != {a_key, b_key}:
            raise AdapterInvalid(f"{WEIGHTS_FILE}: module {module} lacks its {a_key}/{b_key} pair")
        a, b = kinds[a_key], kinds[b_key]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise AdapterInvalid(f"{WEIGHTS_FILE}: module {module} has mismatched LoRA shapes A{a} B{b}")
        if a[0] != rank and not rank_pattern:
            raise AdapterInvalid(
                f"{WEIGHTS_FILE}: module {module} has rank {a[0]} but {CONFIG_FILE} says r={rank}"
            )
        modules[module] = LoraModule(in_features=a[1], out_features=b[0], rank=a[0], embedding=embedding)
    extras = tuple(sorted(p.name for p in path.iterdir() if p.is_file() and p.name in OPTIONAL_FILES))
    peft_version = config.get("peft_version")
    return AdapterFacts(
        path=path,
        config=config,
        rank=rank,
        alpha=alpha,
        target_modules=targets,
        base_model=config.get("base_model_name_or_path"),
        peft_version=peft_version if isinstance(peft_version, str) else None,
        modules=modules,
        tensor_bytes=tensor_bytes,
        extra_files=extras,
    )
