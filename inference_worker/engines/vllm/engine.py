"""vLLM's ``AsyncLLM`` behind the :class:`~inference_worker.engines.base.Engine` interface (INFERENCE_ENGINE=vllm).

vLLM schedules and batches (continuous batching, paged attention, LoRA adapters mixed in one batch with its fused
kernels) in its own engine process; this module turns our requests into vLLM's and its outputs into our events:

- a request: the model's chat template over the turns (images as placeholders), the images resized exactly as the
  transformers engine resizes them (Qwen's ``smart_resize``) and handed over as PIL images, and
  :class:`vllm.SamplingParams` with the seed, stop strings and ``max_tokens``; vLLM streams deltas
  (``RequestOutputKind.DELTA``), which become :class:`TextDelta` events.
- cancel: :meth:`VllmEngine.abort` cancels the request's task, and vLLM's ``generate`` aborts the request in the
  engine when it is cancelled; the stream then ends with ``Finished(reason="cancelled")``.
- adapters: our store and verified cache stay the only way in. An adapter's two files are copied to a directory the
  engine owns (vLLM may reload them later) and added with ``add_lora`` as a ``LoRARequest`` whose integer id is
  stable per content digest; ``remove_lora`` and the copy's deletion when the registry evicts it.
- status: vLLM's scheduler statistics (running, waiting, KV-cache use), from a stat logger of our own.

vLLM is imported by this package only; the worker imports it only when INFERENCE_ENGINE=vllm, and it runs in the
vLLM venv (``make venv-vllm``), whose torch and transformers are vLLM's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.validate import CONFIG_FILE, WEIGHTS_FILE, AdapterFacts, check_targets, read_safetensors_header
from wire.errors import (
    AdapterConflict,
    AdapterIncompatible,
    AdapterInvalid,
    DeadlineExceeded,
    ErrorCode,
    InputError,
    InternalError,
    ServiceError,
)

from ..base import (
    AdapterInfo,
    AdapterOrigin,
    Capabilities,
    ChatTurn,
    EngineRequest,
    EngineStatus,
    Event,
    Finished,
    FinishReason,
    ModelInfo,
    TextDelta,
    Timings,
    Usage,
)

if TYPE_CHECKING:
    from ...config import Settings

log = logging.getLogger(__name__)

VISION_PREFIX = "model.visual."  # Qwen3-VL's vision tower (and its merger) in checkpoint and adapter names
MAX_RATIO = 200  # Qwen's smart_resize refuses more extreme aspect ratios


# vLLM's finish reasons as ours ("stop": an end-of-sequence token or a stop string; "abort": aborted in vLLM).
_FINISH_REASONS: dict[str, FinishReason] = {"length": "length", "stop": "stop", "abort": "cancelled"}


# ---- the model, read from its files (no torch model in this process) -------------------------------------------
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

    def kv_bytes_per_token(self, element_bytes: int) -> int:
        t = self.text_config
        heads = int(t.get("num_attention_heads", 1))
        head_dim = int(t.get("head_dim") or int(t.get("hidden_size", 0)) // max(heads, 1))
        kv_heads = int(t.get("num_key_value_heads") or heads)
        return 2 * int(t.get("num_hidden_layers", 0)) * kv_heads * head_dim * element_bytes


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


def _sampling_defaults(directory: Path) -> dict[str, Any]:
    """The model's own sampling defaults (generation_config.json), for parameters a request omits: the same rule
    as the transformers engine's."""
    path = directory / "generation_config.json"
    gen = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if not gen.get("do_sample", False):
        return {"temperature": 0.0, "top_k": None, "top_p": None, "repetition_penalty": None}
    return {
        "temperature": gen.get("temperature", 1.0) if gen.get("temperature") is not None else 1.0,
        "top_k": gen.get("top_k", 50),
        "top_p": gen.get("top_p", 1.0),
        "repetition_penalty": gen.get("repetition_penalty", 1.0),
    }


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


# ---- images -----------------------------------------------------------------------------------------------------
def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's resize rule (qwen-vl-utils, which the transformers engine uses): sides divisible by ``factor``,
    pixels within [min_pixels, max_pixels], the aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise InputError(f"image aspect ratio {max(height, width) / min(height, width):.0f} is over {MAX_RATIO}",
                         code=ErrorCode.INVALID_IMAGE)
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


# ---- vLLM's statistics ------------------------------------------------------------------------------------------
class _SchedulerView:
    """The latest scheduler statistics vLLM reported (running, waiting, KV-cache use)."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.steps = 0


def _stat_logger_factory(view: _SchedulerView) -> Any:
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                view.running = scheduler_stats.num_running_reqs
                view.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                view.kv_cache_usage = scheduler_stats.kv_cache_usage
                view.steps += 1

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerStatLogger


# ---- adapters ---------------------------------------------------------------------------------------------------
@dataclass
class _Adapter:
    name: str
    lora_id: int
    directory: Path  # the engine's copy of the adapter's files
    info: AdapterInfo
    request: Any  # vllm.lora.request.LoRARequest


@dataclass
class _Request:
    request: EngineRequest
    task: asyncio.Task[None] | None = None
    cancelled: bool = False


class VllmEngine:
    """The Engine interface over one in-process ``AsyncLLM`` (its engine core runs in a process of its own)."""

    def __init__(self, llm: Any, files: ModelFiles, settings: Settings, view: _SchedulerView, info: ModelInfo,
                 tokenizer: Any, max_running: int) -> None:
        self.llm = llm
        self.files = files
        self.settings = settings
        self.info = info
        self.tokenizer = tokenizer
        self.max_running = max_running
        self._view = view
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1
        self.capabilities = Capabilities(vision=files.vision, max_chars_per_token=longest,
                                         sampling_defaults=_sampling_defaults(files.directory))
        vision = files.config.get("vision_config") or {}
        self._image_factor = int(vision.get("patch_size", 16)) * int(vision.get("spatial_merge_size", 2))
        self._requests: dict[str, _Request] = {}
        self._adapters: dict[str, _Adapter] = {}
        self._lora_ids: dict[str, int] = {}  # content digest → LoRARequest id, stable for the process
        self._adapter_dir = Path(tempfile.mkdtemp(prefix="vllm-adapters-"))
        self._closed = False
        element = 4 if info.dtype == "float32" else 2
        self.kv_bytes_per_token = files.kv_bytes_per_token(element)
        cache = llm.vllm_config.cache_config
        blocks = getattr(cache, "num_gpu_blocks", None) or 0
        if blocks:
            self.kv_cache_max_bytes = int(blocks * cache.block_size * self.kv_bytes_per_token)
        else:
            self.kv_cache_max_bytes = int(settings.vllm_cpu_kvcache_space * 2**30)

    # ---- start -----------------------------------------------------------------------------------------------
    @classmethod
    async def start(cls, settings: Settings, model_name: str) -> VllmEngine:
        """Build the ``AsyncLLM`` (spawns vLLM's engine process and loads the model there) off the event loop."""
        return await asyncio.to_thread(cls._build, settings, model_name)

    @classmethod
    def _build(cls, settings: Settings, model_name: str) -> VllmEngine:
        started = time.perf_counter()
        # vLLM reads its CPU KV cache size from the environment (the setting already holds the variable or the flag).
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.vllm_cpu_kvcache_space)
        # vLLM's engine process must not fork this (threaded, event-loop running) process.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        from .cpu_lora_fix import installed

        device = "cpu" if current_platform.is_cpu() else str(current_platform.device_type)
        if device == "cpu" and not installed():
            raise RuntimeError(
                "the inference_worker vLLM plugin is not installed in this environment (pip install --no-deps -e . "
                "in the vLLM venv) or VLLM_PLUGINS leaves it out: without it, base requests batched with adapter "
                "requests get an adapter on CPU"
            )
        files = read_model_files(model_name)
        max_running = settings.batch_rows_for(device)
        view = _SchedulerView()
        args = AsyncEngineArgs(**engine_kwargs(settings, files, device))
        llm = AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger_factory(view)])
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(files.directory))
            model_dtype = str(llm.vllm_config.model_config.dtype).replace("torch.", "")
            info = ModelInfo(
                name=model_name, model_type=str(files.config.get("model_type", "")), device=device,
                dtype=model_dtype, vision=files.vision, load_seconds=time.perf_counter() - started,
                parameters=files.parameters,
            )
            engine = cls(llm, files, settings, view, info, tokenizer, max_running)
        except BaseException:
            llm.shutdown()
            raise
        log.info("vLLM engine up in %.1f s: %s, max_num_seqs %d, max_loras %d, max_lora_rank %d, KV cache %.0f MiB",
                 info.load_seconds, model_dtype, max_running, settings.vllm_max_loras, settings.vllm_max_lora_rank,
                 engine.kv_cache_max_bytes / 2**20)
        return engine

    # ---- requests --------------------------------------------------------------------------------------------
    async def generate(self, request: EngineRequest) -> AsyncGenerator[Event, None]:
        if request.request_id in self._requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        queue: asyncio.Queue[Event] = asyncio.Queue()
        state = _Request(request)
        self._requests[request.request_id] = state
        state.task = asyncio.get_running_loop().create_task(self._run(state, queue))
        finished = False
        try:
            while not finished:
                event = await queue.get()
                finished = isinstance(event, Finished)
                yield event
        finally:
            self._requests.pop(request.request_id, None)
            if not finished and state.task is not None:  # the consumer stopped listening: stop the request
                state.cancelled = True
                state.task.cancel()

    def abort(self, request_id: str) -> None:
        state = self._requests.get(request_id)
        if state is None or state.task is None or state.cancelled:
            return
        state.cancelled = True
        loop = state.task.get_loop()
        loop.call_soon_threadsafe(state.task.cancel)

    async def _run(self, state: _Request, queue: asyncio.Queue[Event]) -> None:
        """One request from start to its Finished event, which is always put, whatever happens."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        request = state.request
        prompt_tokens = completion_tokens = 0
        scheduled_at: float | None = None
        first_token_at: float | None = None
        reason: FinishReason | None = None
        error: ServiceError | None = None
        deadline = request.deadline
        try:
            async with asyncio.timeout_at(deadline) if deadline is not None else contextlib.nullcontext():
                adapter = self._adapters.get(request.adapter) if request.adapter is not None else None
                if request.adapter is not None and adapter is None:
                    raise InternalError(f"adapter {request.adapter} is not loaded in the engine")
                prompt, prompt_tokens = await asyncio.to_thread(self._prompt, request.turns)
                s = request.sampling
                params = SamplingParams(
                    temperature=s.temperature,
                    top_k=s.top_k or 0,
                    top_p=s.top_p if s.top_p is not None else 1.0,
                    repetition_penalty=s.repetition_penalty if s.repetition_penalty is not None else 1.0,
                    seed=s.seed,
                    max_tokens=s.max_tokens,
                    stop=list(s.stop) or None,
                    output_kind=RequestOutputKind.DELTA,
                    skip_special_tokens=True,
                )
                lora = adapter.request if adapter is not None else None
                async for out in self.llm.generate(prompt, params, request.request_id, lora_request=lora):
                    if out.prompt_token_ids is not None:
                        prompt_tokens = len(out.prompt_token_ids)
                    if scheduled_at is None:
                        scheduled_at = _engine_instant(getattr(out.metrics, "scheduled_ts", 0.0))
                    piece = out.outputs[0]
                    completion_tokens += len(piece.token_ids)
                    if piece.text:
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                        queue.put_nowait(TextDelta(piece.text))
                    if out.finished:
                        if str(piece.finish_reason) == "error":  # vLLM: a retryable request-level internal error
                            raise InternalError("vLLM ended the request with an internal error (e.g. a KV cache "
                                                "failure); retry it", retryable=True)
                        reason = _FINISH_REASONS.get(str(piece.finish_reason), "stop")
        except asyncio.CancelledError:
            reason = "cancelled"
            # vLLM aborts a cancelled request itself once it is queued; a cancel that lands while it is being added
            # would leave it running unseen. Aborting again is harmless.
            # BaseException: a second cancel (close() after abort()) must not cost the request its Finished.
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self.llm.abort(request.request_id)), 5)
        except TimeoutError:
            error = DeadlineExceeded("generation did not finish within its deadline (GENERATION_TIMEOUT_S)")
        except ServiceError as exc:
            error = exc
        except Exception as exc:
            error = _service_error(exc)
            if error.code == ErrorCode.INTERNAL_ERROR:
                log.exception("vLLM request %s failed", request.request_id)
        if reason is None and error is None:
            reason = "cancelled" if state.cancelled else "stop"
        now = time.perf_counter()
        queue.put_nowait(Finished(
            reason=None if error is not None else reason,
            usage=Usage(prompt_tokens, completion_tokens),
            timings=Timings(request.received_at, scheduled_at, first_token_at, now),
            error=error,
        ))

    def _prompt(self, turns: tuple[ChatTurn, ...]) -> tuple[dict[str, Any], int]:
        """vLLM's prompt for the turns and its length (blocking: a worker thread)."""
        s = self.settings
        return chat_prompt(self.tokenizer, turns, vision=self.files.vision, model=self.info.name,
                           image_factor=self._image_factor, min_pixels=s.image_min_pixels,
                           max_pixels=s.image_max_pixels, max_prompt_tokens=s.max_prompt_tokens)

    # ---- adapters --------------------------------------------------------------------------------------------
    async def add_adapter(self, name: str, facts: Any, origin: AdapterOrigin | None = None) -> AdapterInfo:
        if name in self._adapters:
            raise AdapterConflict(f"an adapter named {name!r} is already loaded")
        info, digest = await asyncio.to_thread(self._check_adapter, name, facts)
        lora_id = self._lora_ids.setdefault(digest, len(self._lora_ids) + 1)
        directory = self._adapter_dir / f"{lora_id}-{name}"
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=str(directory))
        # The same content under two names (a store name and a local path) shares one LoRA id: vLLM holds it once,
        # and it leaves vLLM when the last of those names is removed.
        shared = any(a.lora_id == lora_id for a in self._adapters.values())
        try:
            await asyncio.to_thread(_copy_adapter, Path(facts.path), directory)
            if not shared:
                await self.llm.add_lora(lora)
        except BaseException as exc:
            if not shared:
                with contextlib.suppress(Exception):
                    await self.llm.remove_lora(lora_id)
            await asyncio.to_thread(shutil.rmtree, directory, True)
            if isinstance(exc, Exception):
                raise AdapterInvalid(f"vLLM could not load the adapter: {_scrub(exc, facts)}",
                                     detail=f"{facts.path}: {exc}") from None
            raise
        self._adapters[name] = _Adapter(name, lora_id, directory, info, lora)
        return info

    def _check_adapter(self, name: str, facts: AdapterFacts) -> tuple[AdapterInfo, str]:
        """Refuse, before vLLM sees it, an adapter that would fail, do nothing, or need what is not enabled: the
        model-dependent checks of the transformers engine, against the checkpoint's tensor shapes."""
        from adapters.validate import REFUSED_CONFIG_FIELDS

        for field in REFUSED_CONFIG_FIELDS:
            if facts.config.get(field):
                raise AdapterInvalid(f"adapter_config.json sets {field}={facts.config[field]!r}: only plain LoRA "
                                     "adapters can be served per request")
        ranks = [m.rank for m in facts.modules.values()] or [facts.rank]
        if max(ranks) > self.settings.vllm_max_lora_rank:
            raise AdapterIncompatible(
                f"adapter rank {max(ranks)} is over VLLM_MAX_LORA_RANK={self.settings.vllm_max_lora_rank}: the vLLM "
                "engine reserves memory for that rank at most"
            )
        absent = [m for m in facts.modules if f"{m}.weight" not in self.files.weights]
        if absent:
            raise AdapterIncompatible(
                f"{len(absent)} of {len(facts.modules)} adapted modules do not exist in this model (e.g. {absent[0]}): "
                "the adapter was trained for another architecture and would do nothing"
            )
        for module, spec in facts.modules.items():
            shape = self.files.weights[f"{module}.weight"]
            expected = [spec.in_features, spec.out_features] if spec.embedding else [spec.out_features,
                                                                                    spec.in_features]
            if shape != expected:
                raise AdapterIncompatible(
                    f"module {module}: adapter expects {spec.in_features}→{spec.out_features}, the model has "
                    f"{shape[-1]}→{shape[0]} (wrong base model or size)"
                )
            if spec.embedding:
                raise AdapterIncompatible(f"module {module}: embedding adapters are not served by the vLLM engine")
        self._check_targets(facts)
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

    def _check_targets(self, facts: AdapterFacts) -> None:
        """target_modules and the weights agree (PEFT's matching rule): no module selected without weights (a
        silent no-op), no weights outside the selection."""
        targets = facts.config.get("target_modules")
        if targets == "all-linear" or not targets:
            return
        if isinstance(targets, str):
            pattern = re.compile(targets)

            def selected(module: str) -> bool:
                return pattern.fullmatch(module) is not None
        else:
            names = [str(t) for t in targets]

            def selected(module: str) -> bool:
                return any(module == t or module.endswith("." + t) for t in names)

        linear = [k.removesuffix(".weight") for k, shape in self.files.weights.items()
                  if k.endswith(".weight") and len(shape) == 2]
        check_targets(facts, {m for m in linear if selected(m)})

    async def remove_adapter(self, name: str) -> None:
        users = [r.request.request_id for r in self._requests.values() if r.request.adapter == name]
        if users:
            raise InternalError(f"adapter {name} is still used by {len(users)} requests")
        adapter = self._adapters.pop(name, None)
        if adapter is None:
            return
        try:
            if not any(a.lora_id == adapter.lora_id for a in self._adapters.values()):
                await self.llm.remove_lora(adapter.lora_id)
        finally:
            await asyncio.to_thread(shutil.rmtree, adapter.directory, True)

    # ---- status and lifecycle --------------------------------------------------------------------------------
    def status(self) -> EngineStatus:
        view = self._view
        return EngineStatus(
            running=view.running,
            waiting=view.waiting,
            max_running=self.max_running,
            kv_cache_bytes=int(view.kv_cache_usage * self.kv_cache_max_bytes),
            kv_cache_max_bytes=self.kv_cache_max_bytes,
            adapters=tuple(sorted(self._adapters)),
            # vLLM's engine process died (killed, out of memory): /ready turns 503 so that an orchestrator replaces
            # this worker, instead of answering every request with an internal error while looking healthy.
            available=self.llm is not None and not self.llm.errored,
            details={
                "engine": "vllm",
                "kv_cache_usage": view.kv_cache_usage,
                "kv_bytes_per_token": self.kv_bytes_per_token,
                "max_loras": self.settings.vllm_max_loras,
                "max_lora_rank": self.settings.vllm_max_lora_rank,
                "lora_ids": {a.name: a.lora_id for a in self._adapters.values()},
                "scheduler_steps": view.steps,
            },
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for state in list(self._requests.values()):
            if state.task is not None:
                state.cancelled = True
                state.task.cancel()
        tasks = [s.task for s in self._requests.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        llm, self.llm = self.llm, None
        await asyncio.to_thread(llm.shutdown)
        del llm  # its __del__ (another shutdown) runs now, not at interpreter exit when vLLM's modules are gone
        gc.collect()
        shutil.rmtree(self._adapter_dir, ignore_errors=True)


def chat_prompt(tokenizer: Any, turns: tuple[ChatTurn, ...], *, vision: bool, model: str, image_factor: int,
                min_pixels: int, max_pixels: int, max_prompt_tokens: int) -> tuple[dict[str, Any], int]:
    """The chat template over the turns, images resized as the transformers engine resizes them (Qwen's
    ``smart_resize``). Returns vLLM's prompt and its length in tokens, image tokens included, refused over
    ``max_prompt_tokens`` (prompt_too_long) before any computation."""
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    image_tokens = 0
    for turn in turns:
        if turn.images and not vision:
            raise InputError(f"{model} is a text-only model: it cannot read images",
                             code=ErrorCode.IMAGES_NOT_SUPPORTED)
        if vision:
            content: list[dict[str, Any]] = [{"type": "image"} for _ in turn.images]
            if turn.text or not content:
                content.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": content})
        else:
            messages.append({"role": turn.role, "content": turn.text})
        for image in turn.images:
            width, height = image.size
            h, w = smart_resize(height, width, image_factor, min_pixels, max_pixels)
            if (w, h) != (width, height):
                image = image.resize((w, h))
            images.append(image)
            image_tokens += (h // image_factor) * (w // image_factor)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    length = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - len(images) + image_tokens
    if length > max_prompt_tokens:
        raise InputError(f"prompt is {length} tokens (images included), over the limit of {max_prompt_tokens}",
                         code=ErrorCode.PROMPT_TOO_LONG)
    prompt: dict[str, Any] = {"prompt": text}
    if images:
        prompt["multi_modal_data"] = {"image": images}
    return prompt, length


def _copy_adapter(source: Path, directory: Path) -> None:
    directory.mkdir(parents=True)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(source / file, directory / file)


def _engine_instant(engine_ts: float) -> float | None:
    """A vLLM engine-process ``time.monotonic()`` instant as this process's ``time.perf_counter()``."""
    if not engine_ts:
        return None
    return time.perf_counter() - (time.monotonic() - engine_ts)


def _scrub(exc: BaseException, facts: Any) -> str:
    return f"{type(exc).__name__}: {exc}".replace(str(facts.path), "<adapter>")[:300]


def _service_error(exc: Exception) -> ServiceError:
    """vLLM's exceptions as the protocol's errors."""
    text = str(exc)
    cause = exc.__cause__ or exc
    if "maximum model length" in text or "maximum model length" in str(cause):
        return InputError(f"prompt and max_tokens exceed the vLLM engine's maximum model length: {cause}"[:300],
                          code=ErrorCode.PROMPT_TOO_LONG)
    return InternalError(f"the vLLM engine failed: {type(cause).__name__}")
