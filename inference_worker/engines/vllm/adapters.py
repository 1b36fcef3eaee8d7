"""The adapters the vLLM engine has added to vLLM: checked, copied, and known to vLLM by an integer id.

Our store and verified cache stay the only way in. An adapter is checked against the checkpoint's tensor shapes
(``adapters.validate.check_compatible``, plus what only this engine limits: the rank it reserves memory for, the vision
tower only with VLLM_TOWER_LORA), its two files are copied to a directory the engine owns (vLLM may reload them
later), and it is added with ``add_lora`` as a ``LoRARequest`` whose integer id is stable per content digest. The same
content under two names (a store name and a local path) shares one id: vLLM holds it once, and it leaves vLLM
(``remove_lora``) with the last of those names; its copy is deleted with each name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.validate import CONFIG_FILE, WEIGHTS_FILE, AdapterFacts, check_compatible
from wire.errors import AdapterConflict, AdapterIncompatible, AdapterInvalid, InternalError

from ..base import AdapterInfo
from ..errors import scrubbed
from .model_files import ModelFiles

if TYPE_CHECKING:
    from ...config import Settings

VISION_PREFIX = "model.visual."  # Qwen3-VL's vision tower (and its merger) in checkpoint and adapter names


@dataclass
class VllmAdapter:
    name: str
    lora_id: int
    directory: Path  # the engine's copy of the adapter's files
    info: AdapterInfo
    request: Any  # vllm.lora.request.LoRARequest


class VllmAdapters:
    """The adapters added to one ``AsyncLLM``, by our name."""

    def __init__(self, files: ModelFiles, settings: Settings) -> None:
        self.settings = settings
        self.shapes = files.module_shapes()
        self.loaded: dict[str, VllmAdapter] = {}
        self._lora_ids: dict[str, int] = {}  # content digest → LoRARequest id, stable for the process
        self._directory = Path(tempfile.mkdtemp(prefix="vllm-adapters-"))

    def lora_request(self, name: str | None) -> Any:
        """vLLM's ``LoRARequest`` of a loaded adapter; None for the base model."""
        if name is None:
            return None
        adapter = self.loaded.get(name)
        if adapter is None:
            raise InternalError(f"adapter {name} is not loaded in the engine")
        return adapter.request

    async def add(self, llm: Any, name: str, facts: AdapterFacts) -> AdapterInfo:
        if name in self.loaded:
            raise AdapterConflict(f"an adapter named {name!r} is already loaded")
        info, digest = await asyncio.to_thread(self.check, name, facts)
        lora_id = self._lora_ids.setdefault(digest, len(self._lora_ids) + 1)
        directory = self._directory / f"{lora_id}-{name}"
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=str(directory))
        shared = any(a.lora_id == lora_id for a in self.loaded.values())
        try:
            await asyncio.to_thread(_copy_adapter, Path(facts.path), directory)
            if not shared:
                await llm.add_lora(lora)
        except BaseException as exc:
            if not shared:
                with contextlib.suppress(Exception):
                    await llm.remove_lora(lora_id)
            await asyncio.to_thread(shutil.rmtree, directory, True)
            if isinstance(exc, Exception):
                raise AdapterInvalid(f"vLLM could not load the adapter: {scrubbed(exc, facts.path)}",
                                     detail=f"{facts.path}: {exc}") from None
            raise
        self.loaded[name] = VllmAdapter(name, lora_id, directory, info, lora)
        return info

    def check(self, name: str, facts: AdapterFacts) -> tuple[AdapterInfo, str]:
        """Refuse, before vLLM sees it, an adapter that would fail, do nothing, or need what is not enabled; its
        info and content digest otherwise (blocking: reads the files)."""
        check_compatible(facts, self.shapes, no_embeddings="the vLLM engine")
        ranks = [m.rank for m in facts.modules.values()] or [facts.rank]
        if max(ranks) > self.settings.vllm_max_lora_rank:
            raise AdapterIncompatible(
                f"adapter rank {max(ranks)} is over VLLM_MAX_LORA_RANK={self.settings.vllm_max_lora_rank}: the vLLM "
                "engine reserves memory for that rank at most"
            )
        vision = any(m.startswith(VISION_PREFIX) for m in facts.modules)
        if vision and not self.settings.vllm_tower_lora:
            raise AdapterIncompatible(
                "the adapter adapts the vision tower: the vLLM engine serves such adapters only with "
                "VLLM_TOWER_LORA=true (vLLM's experimental enable_tower_connector_lora)"
            )
        digest = hashlib.sha256()
        for file in (CONFIG_FILE, WEIGHTS_FILE):
            with (Path(facts.path) / file).open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        info = AdapterInfo(name=name, rank=facts.rank, modules=len(facts.modules), vision=vision,
                           parameter_bytes=facts.tensor_bytes)
        return info, digest.hexdigest()

    async def remove(self, llm: Any, name: str) -> None:
        adapter = self.loaded.pop(name, None)
        if adapter is None:
            return
        try:
            if not any(a.lora_id == adapter.lora_id for a in self.loaded.values()):
                await llm.remove_lora(adapter.lora_id)
        finally:
            await asyncio.to_thread(shutil.rmtree, adapter.directory, True)

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


def _copy_adapter(source: Path, directory: Path) -> None:
    directory.mkdir(parents=True)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(source / file, directory / file)
