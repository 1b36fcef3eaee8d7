"""The in-process transformers engine: the :class:`~inference_worker.engines.base.Engine` interface over the
scheduler thread (continuous batching, an adapter per row).

The event loop never touches the model: a request is prepared (chat template, image preprocessing, tokenization)
on a preparation thread, handed to the scheduler thread, and its events come back to the loop in one
``call_soon_threadsafe`` per scheduler step. Adapters are read and checked on a thread, then installed between two
forward passes by the scheduler thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...errors import ErrorCode, InputError, InternalError, ServiceError
from ..base import (
    AdapterInfo,
    EngineRequest,
    EngineStatus,
    Event,
    Finished,
    StepStats,
    Timings,
    Usage,
)
from .detok import Detokenizer
from .lora import LoraBank, LoraWeights, load_lora_weights
from .model import LoadedModel, load_model
from .sampling import RowSampler
from .scheduler import Scheduler, Sequence

log = logging.getLogger(__name__)


class TransformersEngine:
    def __init__(self, lm: LoadedModel, *, max_running: int, kv_cache_max_bytes: int, vision_cache_max_bytes: int,
                 prepare_threads: int = 2, on_step: Callable[[StepStats], None] | None = None) -> None:
        self.lm = lm
        self.info = lm.info
        self.capabilities = lm.capabilities
        self.bank = LoraBank(lm.model)
        self.scheduler = Scheduler(lm, self.bank, max_rows=max_running, kv_cache_max_bytes=kv_cache_max_bytes,
                                   vision_cache_max_bytes=vision_cache_max_bytes, on_step=on_step)
        self._prepare = ThreadPoolExecutor(prepare_threads, thread_name_prefix="prepare",
                                           initializer=_one_intra_op_thread)
        self._sequences: dict[str, Sequence] = {}
        self._started = False

    @classmethod
    def load(cls, name: str, *, device: str = "auto", dtype: str = "auto", image_min_pixels: int = 64 * 64,
             image_max_pixels: int = 1024 * 32 * 32, max_prompt_tokens: int = 16384, max_running: int = 8,
             kv_cache_max_bytes: int = 4 << 30, vision_cache_max_bytes: int = 256 << 20,
             on_step: Callable[[StepStats], None] | None = None) -> TransformersEngine:
        """Load the model (blocking: call from a thread) and build the engine around it."""
        lm = load_model(name, device=device, dtype=dtype, image_min_pixels=image_min_pixels,
                        image_max_pixels=image_max_pixels, max_prompt_tokens=max_prompt_tokens)
        return cls(lm, max_running=max_running, kv_cache_max_bytes=kv_cache_max_bytes,
                   vision_cache_max_bytes=vision_cache_max_bytes, on_step=on_step)

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self.scheduler.start()

    # ---- requests --------------------------------------------------------------------------------------------
    async def generate(self, request: EngineRequest) -> AsyncGenerator[Event, None]:
        self._start()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[Event]] = asyncio.Queue()

        def deliver(events: list[Event]) -> None:  # scheduler thread
            loop.call_soon_threadsafe(queue.put_nowait, events)

        if request.request_id in self._sequences:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        seq = Sequence(request, RowSampler(request.sampling, self.lm.device),
                       Detokenizer(self.lm.tokenizer, request.sampling.stop), deliver)
        self._sequences[request.request_id] = seq
        finished = False
        try:
            try:
                seq.prepared = await loop.run_in_executor(self._prepare, self.lm.prepare, request.turns)
                self._check_fits(seq)
            except ServiceError as exc:
                finished = True
                yield self._failed(request, exc)
                return
            except Exception as exc:
                log.exception("preparing %s failed", request.request_id)
                finished = True
                yield self._failed(request, InternalError(f"preparing the prompt failed: {type(exc).__name__}: "
                                                          f"{exc}"))
                return
            try:
                self.scheduler.submit(seq)
            except ServiceError as exc:
                finished = True
                yield self._failed(request, exc)
                return
            while not finished:
                for event in await queue.get():
                    finished = isinstance(event, Finished)
                    yield event
        finally:
            self._sequences.pop(request.request_id, None)
            if not finished:  # the consumer stopped listening: stop the request
                seq.aborted = True
                self.scheduler.wake()

    def _check_fits(self, seq: Sequence) -> None:
        need = seq.reserved_len * self.scheduler.cache.bytes_per_token
        if need > self.scheduler.kv_cache_max_bytes:
            assert seq.prepared is not None
            raise InputError(
                f"the prompt ({seq.prepared.length} tokens) plus max_tokens ({seq.request.sampling.max_tokens}) need "
                f"{need / 2**20:.1f} MiB of KV cache, more than KV_CACHE_MAX_BYTES "
                f"({self.scheduler.kv_cache_max_bytes / 2**20:.1f} MiB)",
                code=ErrorCode.PROMPT_TOO_LONG,
            )

    @staticmethod
    def _failed(request: EngineRequest, error: ServiceError) -> Finished:
        now = time.perf_counter()
        return Finished(reason=None, usage=Usage(0, 0),
                        timings=Timings(request.received_at, None, None, now), error=error)

    def abort(self, request_id: str) -> None:
        seq = self._sequences.get(request_id)
        if seq is not None:
            seq.aborted = True
            self.scheduler.wake()

    # ---- adapters --------------------------------------------------------------------------------------------
    async def add_adapter(self, name: str, facts: Any) -> AdapterInfo:
        self._start()
        lm = self.lm
        loop = asyncio.get_running_loop()
        weights: LoraWeights = await loop.run_in_executor(
            self._prepare, lambda: load_lora_weights(self.bank, facts, device=lm.device, dtype=lm.dtype))
        await asyncio.wrap_future(self.scheduler.call(lambda: self.bank.install(name, weights)))
        return AdapterInfo(name=name, rank=weights.rank, modules=len(weights.modules), vision=weights.vision,
                           parameter_bytes=weights.parameter_bytes)

    async def remove_adapter(self, name: str) -> None:
        self._start()

        def remove() -> None:
            users = [s.request.request_id for s in [*self.scheduler.running, *self.scheduler.waiting]
                     if s.adapter == name]
            if users:
                raise InternalError(f"adapter {name} is still used by {len(users)} requests")
            self.bank.remove(name)
            self.scheduler.vision.drop_adapter(name)

        await asyncio.wrap_future(self.scheduler.call(remove))

    # ---- status and lifecycle --------------------------------------------------------------------------------
    def status(self) -> EngineStatus:
        running, waiting = self.scheduler.counts()
        vision = self.scheduler.vision
        return EngineStatus(
            running=running,
            waiting=waiting,
            max_running=self.scheduler.max_rows,
            kv_cache_bytes=self.scheduler.cache.allocated_bytes(),
            kv_cache_max_bytes=self.scheduler.kv_cache_max_bytes,
            adapters=tuple(sorted(self.bank.adapters)),
            details={
                "engine": "transformers",
                "kv_bytes_per_token": self.scheduler.cache.bytes_per_token,
                "decode_steps": self.scheduler.steps,
                "vision_cache_bytes": vision.bytes,
                "vision_cache_hits": vision.hits,
                "vision_cache_misses": vision.misses,
            },
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.scheduler.close)
        self._prepare.shutdown(wait=False, cancel_futures=True)


def _one_intra_op_thread() -> None:
    """Preparation threads run torch operations (image preprocessing, adapter tensors) on one thread each.

    On a CPU, a thread that runs a parallel torch operation gets its own OpenMP team; once a second team exists next
    to the scheduler's, the few cores are oversubscribed and OpenMP stops spinning between operations, which makes
    every later decode step slower (measured with the thread-per-request worker: 0.66× one request's decode speed).
    ``torch.set_num_threads`` is per thread: the scheduler keeps its team.
    """
    import torch

    torch.set_num_threads(1)
