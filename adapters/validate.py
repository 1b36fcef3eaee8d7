"""Checks of a PEFT LoRA adapter: its directory without a model (config, safetensors header, tensor shapes), and
its fit to a model given as a table of module shapes.

Only the safetensors header is read (a little-endian u64 length, then JSON): no tensor is materialised and no
pickle is ever opened. :func:`inspect_adapter` needs no model. :func:`check_compatible` holds the rules that depend on
the model (do these modules exist in *this* model, with these shapes, selected by target_modules?) against the
:class:`ModuleShape` table an engine supplies: the transformers engine from its live modules, the vLLM engine from
its checkpoint's tensor headers. Rules only one engine has (its library's config parser, its own limits) stay there.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
    if "peft_type" not in config:
        raise AdapterInvalid(f"{CONFIG_FILE} has no peft_type (PEFT's save_pretrained writes \"peft_type\": \"LORA\"): "
                             "only LoRA adapters are supported")
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


# ----------------------------------------------------------------------------------------------------------------
# The adapter against a model: module shapes supplied by the engine.


@dataclass(frozen=True)
class ModuleShape:
    """One module of a model as an adapter sees it; an engine supplies a table of them (module name → shape)."""

    kind: Literal["linear", "embedding", "other"]  # other: a module that no LoRA A/B pair of ours can adapt
    in_features: int = 0  # an embedding's num_embeddings
    out_features: int = 0  # an embedding's embedding_dim
    type_name: str = ""  # the module's class where the engine knows it, named in refusals

    def describe(self) -> str:
        if self.kind == "other":
            return self.type_name or "no linear or embedding module"
        size = f"{self.in_features}→{self.out_features}"
        return f"{self.type_name} {size}" if self.type_name else size


def check_compatible(facts: AdapterFacts, shapes: Mapping[str, ModuleShape], *,
                     targeted: Callable[[str], bool] | None = None, no_embeddings: str | None = None) -> None:
    """Refuse an adapter that would fail, compute something else than PEFT would, or silently do nothing on the model
    whose modules are ``shapes``. In order: config fields beyond plain LoRA (adapter_invalid); adapted modules the
    model lacks (another architecture); embedding adapters where ``no_embeddings`` (the engine, named in the refusal)
    serves none; modules of another kind or size (another base model); target_modules that disagree with the weights.

    ``targeted`` says whether target_modules select a module, by the engine's matching rule (the transformers engine
    passes PEFT's own); by default PEFT's rule on names alone (:func:`target_rule`), and no target check where names
    cannot tell."""
    for name in REFUSED_CONFIG_FIELDS:
        if facts.config.get(name):
            raise AdapterInvalid(f"{CONFIG_FILE} sets {name}={facts.config[name]!r}: only plain LoRA adapters "
                                 "can be served per request")
    absent = [m for m in facts.modules if m not in shapes]
    if absent:
        raise AdapterIncompatible(
            f"{len(absent)} of {len(facts.modules)} adapted modules do not exist in this model (e.g. {absent[0]}): "
            "the adapter was trained for another architecture and would do nothing"
        )
    for name, spec in facts.modules.items():
        if spec.embedding and no_embeddings:
            raise AdapterIncompatible(f"module {name}: embedding adapters are not served by {no_embeddings}")
        shape = shapes[name]
        kind = "embedding" if spec.embedding else "linear"
        if (shape.kind, shape.in_features, shape.out_features) != (kind, spec.in_features, spec.out_features):
            raise AdapterIncompatible(
                f"module {name}: adapter expects {spec.in_features}→{spec.out_features}, the model has "
                f"{shape.describe()} (wrong base model or size)"
            )
    selects = targeted if targeted is not None else target_rule(facts.config.get("target_modules"))
    if selects is not None:
        check_targets(facts, {name for name, shape in shapes.items() if shape.kind != "other" and selects(name)})


def target_rule(target_modules: Any) -> Callable[[str], bool] | None:
    """PEFT's rule for the modules ``target_modules`` select, on names alone: a string is a regular expression the
    whole name matches; a list entry is the name or its last dotted parts. None where names cannot tell
    (``all-linear`` selects by module type) or nothing is given."""
    if target_modules == "all-linear" or not target_modules:
        return None
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise AdapterInvalid(f"{CONFIG_FILE}: target_modules is not a valid regular expression ({exc})") from None
        return lambda name: pattern.fullmatch(name) is not None
    names = [str(t) for t in target_modules]
    return lambda name: any(name == t or name.endswith("." + t) for t in names)


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
