"""vLLM's ``AsyncLLM`` behind the :class:`~inference_worker.engines.base.Engine` interface (INFERENCE_ENGINE=vllm).

vLLM schedules and batches (continuous batching, paged attention, LoRA adapters mixed in one batch with its fused
kernels) in its own engine process; this engine turns our requests into vLLM's and its outputs into our events:

- a request: a task of its own builds vLLM's inputs (``inputs.py``) and iterates vLLM's ``generate``, whose deltas
  (``RequestOutputKind.DELTA``) become :class:`TextDelta` events, then one :class:`Finished`.
- abort: :meth:`VllmEngine.abort` cancels the request's task, and vLLM's ``generate`` aborts the request in the
  engine when it is cancelled; the stream then ends with ``Finished(reason="cancelled")``.
- adapters: checked, copied and added to vLLM by ``adapters.py``.
- status: vLLM's scheduler statistics (running requests, KV-cache use), from a stat logger of our own.

vLLM is imported by this package only; the worker imports it only when INFERENCE_ENGINE=vllm, and it runs in the
vLLM venv (``make venv-vllm``), whose torch and transformers are vLLM's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wire.errors import ErrorCode, InternalError, PromptTooLong, ServiceError

from ..base import (
    AdapterInfo,
    AdapterOrigin,
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
from ..capabilities import model_capabilities
from ..streams import Outbox, RequestStreams
from .adapters import VllmAdapters
from .inputs import chat_prompt, sampling_params
from .model_files import ModelFiles, engine_kwargs, read_model_files

if TYPE_CHECKING:
    from ...config import Settings

log = logging.getLogger(__name__)

# vLLM's finish reasons as ours ("stop": an end-of-sequence token or a stop string; "abort": aborted in vLLM).
_FINISH_REASONS: dict[str, FinishReason] = {"length": "length", "stop": "stop", "abort": "cancelled"}


class SchedulerView:
    """The latest scheduler statistics vLLM reported (running requests, KV-cache use)."""

    def __init__(self) -> None:
        self.running = 0
        self.kv_cache_usage = 0.0
        self.steps = 0

    def stat_logger(self) -> Any:
        """A vLLM stat logger class that keeps this view up to date."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        view = self

        class SchedulerStatLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                       engine_idx: int = 0) -> None:
                if scheduler_stats is not None:
                    view.running = scheduler_stats.num_running_reqs
                    view.kv_cache_usage = scheduler_stats.kv_cache_usage
                    view.steps += 1

            def log_engine_initialized(self) -> None:
                pass

        return SchedulerStatLogger


@dataclass
class _Request:
    request: EngineRequest
    task: asyncio.Task[None] | None = None
    cancelled: bool = False


class VllmEngine:
    """The Engine interface over one in-process ``AsyncLLM`` (its engine core runs in a process of its own)."""

    def __init__(self, llm: Any, files: ModelFiles, settings: Settings, view: SchedulerView, info: ModelInfo,
                 tokenizer: Any, max_running: int) -> None:
        self.llm = llm
        self.files = files
        self.settings = settings
        self.info = info
        self.tokenizer = tokenizer
        self.max_running = max_running
        self._view = view
        self.capabilities = model_capabilities(vision=files.vision, tokenizer=tokenizer,
                                               generation_config=files.generation_config())
        self.adapters = VllmAdapters(files, settings)
        self._streams: RequestStreams[_Request] = RequestStreams(abort=_cancel)
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
        view = SchedulerView()
        args = AsyncEngineArgs(**engine_kwargs(settings, files, device))
        llm = AsyncLLM.from_engine_args(args, stat_loggers=[view.stat_logger()])
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
    def generate(self, request: EngineRequest) -> AsyncGenerator[Event, None]:
        return self._streams.stream(request, start=lambda outbox: self._launch(request, outbox))

    def _launch(self, request: EngineRequest, outbox: Outbox) -> _Request:
        state = _Request(request)
        state.task = asyncio.get_running_loop().create_task(self._run(state, outbox))
        return state

    def abort(self, request_id: str) -> None:
        self._streams.abort(request_id)

    async def _run(self, state: _Request, outbox: Outbox) -> None:
        """One request from start to its Finished event, which is always put, whatever happens."""
        request = state.request
        prompt_tokens = completion_tokens = 0
        scheduled_at: float | None = None
        first_token_at: float | None = None
        reason: FinishReason | None = None
        error: ServiceError | None = None
        try:
            lora = self.adapters.lora_request(request.adapter)
            prompt, prompt_tokens = await asyncio.to_thread(self._prompt, request.turns)
            params = sampling_params(request.sampling)
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
                    outbox.put(TextDelta(piece.text))
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
        except ServiceError as exc:
            error = exc
        except Exception as exc:
            error = _service_error(exc)
            if error.code == ErrorCode.INTERNAL_ERROR:
                log.exception("vLLM request %s failed", request.request_id)
        if reason is None and error is None:
            reason = "cancelled" if state.cancelled else "stop"
        outbox.put(Finished(
            reason=None if error is not None else reason,
            usage=Usage(prompt_tokens, completion_tokens),
            timings=Timings(request.received_at, scheduled_at, first_token_at, time.perf_counter()),
            error=error,
        ))

    def _prompt(self, turns: tuple[ChatTurn, ...]) -> tuple[dict[str, Any], int]:
        """vLLM's prompt for the turns and its length (blocking: a worker thread)."""
        s = self.settings
        return chat_prompt(self.tokenizer, turns, vision=self.files.vision, model=self.info.name,
                           image_factor=self.files.image_factor, min_pixels=s.image_min_pixels,
                           max_pixels=s.image_max_pixels, max_prompt_tokens=s.max_prompt_tokens)

    # ---- adapters --------------------------------------------------------------------------------------------
    async def add_adapter(self, name: str, facts: Any, origin: AdapterOrigin | None = None) -> AdapterInfo:
        return await self.adapters.add(self.llm, name, facts)

    async def remove_adapter(self, name: str) -> None:
        users = [s.request.request_id for s in self._streams.handles() if s.request.adapter == name]
        if users:
            raise InternalError(f"adapter {name} is still used by {len(users)} requests")
        await self.adapters.remove(self.llm, name)

    # ---- status and lifecycle --------------------------------------------------------------------------------
    def status(self) -> EngineStatus:
        view = self._view
        loaded = self.adapters.loaded
        return EngineStatus(
            running=view.running,
            max_running=self.max_running,
            kv_cache_bytes=int(view.kv_cache_usage * self.kv_cache_max_bytes),
            kv_cache_max_bytes=self.kv_cache_max_bytes,
            adapters=tuple(sorted(loaded)),
            # vLLM's engine process died (killed, out of memory): /ready turns 503 so that an orchestrator replaces
            # this worker, instead of answering every request with an internal error while looking healthy.
            available=self.llm is not None and not self.llm.errored,
            details={
                "engine": "vllm",
                "kv_cache_usage": view.kv_cache_usage,
                "kv_bytes_per_token": self.kv_bytes_per_token,
                "max_loras": self.settings.vllm_max_loras,
                "max_lora_rank": self.settings.vllm_max_lora_rank,
                "lora_ids": {a.name: a.lora_id for a in loaded.values()},
                "scheduler_steps": view.steps,
            },
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = []
        for state in self._streams.handles():
            if state.task is not None:
                state.cancelled = True
                state.task.cancel()
                tasks.append(state.task)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        llm, self.llm = self.llm, None
        await asyncio.to_thread(llm.shutdown)
        del llm  # its __del__ (another shutdown) runs now, not at interpreter exit when vLLM's modules are gone
        gc.collect()
        self.adapters.close()


def _cancel(state: _Request) -> None:
    """Abort one request (any thread, idempotent): cancel its task on the event loop that runs it."""
    if state.task is None or state.cancelled:
        return
    state.cancelled = True
    state.task.get_loop().call_soon_threadsafe(state.task.cancel)


def _engine_instant(engine_ts: float) -> float | None:
    """A vLLM engine-process ``time.monotonic()`` instant as this process's ``time.perf_counter()``."""
    if not engine_ts:
        return None
    return time.perf_counter() - (time.monotonic() - engine_ts)


def _service_error(exc: Exception) -> ServiceError:
    """vLLM's exceptions as the protocol's errors."""
    text = str(exc)
    cause = exc.__cause__ or exc
    if "maximum model length" in text or "maximum model length" in str(cause):
        return PromptTooLong(f"prompt and max_tokens exceed the vLLM engine's maximum model length: {cause}"[:300])
    return InternalError(f"the vLLM engine failed: {type(cause).__name__}")
