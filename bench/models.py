"""The checkpoints and adapters the benchmarks run on, built locally once and cached.

Models and adapters come from the same builders as the offline demo (:mod:`checkpoints.build`): random weights, a
locally trained tokenizer, written with ``save_pretrained`` and loaded back with ``from_pretrained``. Sizes:

* ``tiny`` — ~0.3M parameters (the test/demo model),
* ``mid``  — ~100M parameters,
* ``2b``   — the real Qwen3-VL-2B-Instruct architecture with random bf16 weights (4.3 GB on disk, ~30 s to build).

Adapters are PEFT LoRA directories. The regular ones are written by PEFT itself (``build_lora_adapter``); the
many distinct adapters that cold loads need are written directly from the model's ``config.json`` (random
tensors with PEFT's key names and shapes, plus a PEFT ``adapter_config.json``), which takes no model in memory —
for the 2B architecture that saves loading and copying 4.3 GB per adapter. Both kinds go through the worker's
full validation before they are injected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters.config import cache_dir
from checkpoints.build import (
    BUILDER_VERSION,
    TEXT_TARGETS,
    build_lora_adapter,
    build_vl_checkpoint,
    load_for_building,
    write_config_adapter,
)

log = logging.getLogger(__name__)

SIZES = ("tiny", "mid", "2b")
# Bump when what this module writes changes, so cached files are rebuilt.
BENCH_BUILD_VERSION = 1


def default_cache_dir() -> Path:
    return cache_dir("bench")


def build_dtype(size: str) -> str:
    """The dtype a size is written in: the 2B architecture in bfloat16 (as released), the small ones in float32."""
    return "bfloat16" if size == "2b" else "float32"


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    seed: int
    rank: int = 16
    alpha: int = 32
    targets: tuple[str, ...] = TEXT_TARGETS

    def key(self) -> str:
        return f"{self.name}-s{self.seed}-r{self.rank}-a{self.alpha}-{'.'.join(self.targets)}"


class ModelCache:
    """``root/models/<size>-…`` and ``root/adapters/<model key>/<adapter key>``, each built once (atomically)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    # ---- models ------------------------------------------------------------------------------------------------
    def model(self, size: str) -> Path:
        """The checkpoint directory of a built-in size, building it the first time."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r} (one of {', '.join(SIZES)})")
        dtype = build_dtype(size)
        target = self.root / "models" / f"{size}-{dtype}-b{BUILDER_VERSION}"
        if (target / "config.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("building the %s model in %s (random weights; once)", size, target)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            build_vl_checkpoint(Path(tmp) / "model", size, seed=0, dtype=dtype)
            os.replace(Path(tmp) / "model", target)
        return target

    # ---- adapters ----------------------------------------------------------------------------------------------
    def _model_key(self, model_dir: Path) -> str:
        config = (Path(model_dir) / "config.json").read_bytes()
        digest = hashlib.sha256(str(Path(model_dir).resolve()).encode() + config).hexdigest()[:12]
        return f"{Path(model_dir).name}-{digest}"

    def adapters(self, model_dir: Path, specs: Sequence[AdapterSpec], *, with_peft: bool = True) -> dict[str, Path]:
        """Adapter directories for ``model_dir`` (name → path), building the missing ones.

        ``with_peft``: write them with PEFT (``get_peft_model`` + ``save_pretrained`` on the loaded model); else
        write them from the config alone (:func:`write_config_adapter`).
        """
        base = self.root / "adapters" / self._model_key(model_dir)
        out: dict[str, Path] = {}
        missing = []
        for spec in specs:
            path = base / f"{spec.key()}-{'peft' if with_peft else 'cfg'}-v{BENCH_BUILD_VERSION}"
            out[spec.name] = path
            if not (path / "adapter_model.safetensors").is_file():
                missing.append((spec, path))
        if not missing:
            return out
        base.mkdir(parents=True, exist_ok=True)
        model = load_for_building(model_dir) if with_peft else None
        for spec, path in missing:
            with tempfile.TemporaryDirectory(dir=base, prefix=".build-") as tmp:
                staged = Path(tmp) / "adapter"
                if with_peft:
                    build_lora_adapter(model_dir, staged, seed=spec.seed, rank=spec.rank, alpha=spec.alpha,
                                       target_modules=spec.targets, model=model, init_scale=0.5)
                else:
                    write_config_adapter(model_dir, staged, seed=spec.seed, rank=spec.rank, alpha=spec.alpha,
                                         targets=spec.targets)
                if path.exists():
                    shutil.rmtree(path)
                os.replace(staged, path)
        return out


def adapter_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def is_vision_model(model_dir: Path) -> bool:
    return "vision_config" in json.loads((Path(model_dir) / "config.json").read_text())


def parameter_count(model_dir: Path) -> int:
    """Parameters of a checkpoint, from its safetensors headers (no weights are read)."""
    from adapters.validate import read_safetensors_header

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        for entry in read_safetensors_header(f).values():
            n = 1
            for d in entry["shape"]:
                n *= d
            total += n
    return total
