"""The in-process transformers engine: the :class:`~inference_worker.engines.base.Engine` interface over the
scheduler thread (continuous batching, an adapter per row).

The event loop never touches the model. :meth:`TransformersEngine.launch` starts the engine's thread, which loads
the model and then runs the scheduler loop: every torch computation — preparing requests, prefills, decode steps,
converting adapter tensors — happens on that one thread (see ``scheduler.py`` for why). A request's events come back
to the event loop in one ``call_soon_threadsafe`` per scheduler step (``streams.Outbox``); adapter files are read on
a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from typing import Any

from wire.errors import InternalError

from ..base import AdapterInfo, AdapterOrigin, EngineRequest, EngineStatus, Event, StepStats
from ..streams import Outbox, RequestStreams
from .detok import Detokenizer
from .lora import LoraBank, build_lora_weights, read_lora_files
from .model import LoadedModel
from .sampling import RowSampler
from .scheduler import Scheduler, Sequence

log = logging.getLogger(__name__)


class TransformersEngine:
    def __init__(self, lm: LoadedModel, *, max_running: int, kv_cache_max_bytes: int, vision_cache_max_bytes: int,
                 on_step: Callable[[StepStats], None] | None = None) -> None:
        self.lm = lm
        self.info = lm.info
        self.capabilities = lm.capabilities
        self.bank = LoraBank(lm.model)
        self.scheduler = Scheduler(lm, self.bank, max_rows=max_running, kv_cache_max_bytes=kv_cache_max_bytes,
                                   vision_cache_max_bytes=vision_cache_max_bytes, on_step=on_step)
        self._streams: RequestStreams[Sequence] = RequestStreams(abort=self._stop)
        self._started = False

    @classmethod
    def launch(cls, load: Callable[[], LoadedModel],
               options: Callable[[LoadedModel], dict[str, Any]]) -> Future[TransformersEngine]:
        """Start the engine's thread: it loads the model with ``load``, builds the engine (``options(model)`` gives the
        constructor's keyword arguments, which may depend on the device), resolves the returned future with it, and
        runs the scheduler loop until ``close``."""
        future: Future[TransformersEngine] = Future()

        def main() -> None:
            try:
                lm = load()
                engine = cls(lm, **options(lm))
                engine._started = True
            except BaseException as exc:
                future.set_exception(exc)
                return
            future.set_result(engine)
            engine.scheduler.run_here()

        threading.Thread(target=main, name="engine", daemon=True).start()
        return future

    def _start(self) -> None:
        """Run the scheduler on a thread of its own (an engine built directly, as tests do)."""
        if not self._started:
            self._started = True
            self.scheduler.start()

    # ---- requests --------------------------------------------------------------------------------------------
    def generate(self, request: EngineRequest) -> AsyncGenerator[Event, None]:
        self._start()
        return self._streams.stream(request, start=lambda outbox: self._submit(request, outbox))

    def _submit(self, request: EngineRequest, outbox: Outbox) -> Sequence:
        seq = Sequence(request, RowSampler(request.sampling, self.lm.device),
                       Detokenizer(self.lm.tokenizer, request.sampling.stop), outbox.put_threadsafe)
        self.scheduler.submit(seq)
        return seq

    def abort(self, request_id: str) -> None:
        self._streams.abort(request_id)

    def _stop(self, seq: Sequence) -> None:
        seq.aborted = True  # the scheduler ends it at its next turn
        self.scheduler.wake()

    # ---- adapters --------------------------------------------------------------------------------------------
    async def add_adapter(self, name: str, facts: Any, origin: AdapterOrigin | None = None) -> AdapterInfo:
        self._start()
        lm, bank = self.lm, self.bank
        config, raw = await asyncio.to_thread(read_lora_files, bank, facts)

        def install() -> AdapterInfo:
            weights = build_lora_weights(bank, facts, config, raw, device=lm.device, dtype=lm.dtype)
            bank.install(name, weights)
            return AdapterInfo(name=name, rank=weights.rank, modules=len(weights.modules), vision=weights.vision,
                               parameter_bytes=weights.parameter_bytes)

        return await asyncio.wrap_future(self.scheduler.call(install))

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
        vision = self.scheduler.vision
        return EngineStatus(
            running=len(self.scheduler.running),
            max_running=self.scheduler.max_rows,
            kv_cache_bytes=self.scheduler.cache.allocated_bytes(),
            kv_cache_max_bytes=self.scheduler.kv_cache_max_bytes,
            adapters=tuple(sorted(self.bank.adapters)),
            details={
                "engine": "transformers",
                "kv_bytes_per_token": self.scheduler.cache.bytes_per_token,
                "weight_layout": self.lm.weight_layout,
                "decode_steps": self.scheduler.steps,
                "vision_cache_bytes": vision.bytes,
                "vision_cache_hits": vision.hits,
                "vision_cache_misses": vision.misses,
            },
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.scheduler.close)
