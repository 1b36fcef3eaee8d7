"""The scheduler thread: the one owner of the model. Continuous batching with an adapter per row.

Each turn of the loop, between two forward passes:

1. run queued control work (adapter installs and removals),
2. end the requests that were aborted (their rows leave the batch at once; deadlines are the request front's, which
   aborts a request whose time is up),
3. admit waiting requests, first come first served, while the batch has a free row and the KV memory that
   admission reserves for the whole batch stays under ``KV_CACHE_MAX_BYTES``: each admitted request is prepared
   (chat template, image preprocessing, tokenization), runs its own prefill (vision encoder, shared through the
   vision cache, then the prompt) with its own adapter, and joins the batch with its first token,
4. run one decode step of every row at once, each row with its own adapter (the batch's ``LoraMapping``), position
   and sampling; rows that finished (end of sequence, stop string, ``max_tokens``) leave.

A request never waits for another one to finish: only for a free row or KV memory. An error in one request (its
preparation, its prefill, non-finite logits) ends that request; the others go on. Every request gets exactly one
``Finished``.

Every torch computation of the engine runs on this one thread (the engine's thread also loads the model): on a CPU,
a second thread that runs parallel torch operations gets an OpenMP team of its own, the cores are then
oversubscribed and every later decode step is slower (measured on 2 cores: preparing requests on two other threads
made the 116M model's decode step 30 → 52 ms and its prefill 180 → 400 ms). ``torch.set_num_threads`` cannot confine
another thread: the count it sets is global and is picked up by threads that start computing later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from wire.errors import InternalError, PromptTooLong, ServiceError, ShuttingDown

from ..base import EngineRequest, Event, Finished, FinishReason, StepStats, TextDelta, Timings, Usage
from .detok import Detokenizer
from .kv import RowCache
from .lora import LoraBank, LoraMapping
from .model import LoadedModel, Prepared
from .sampling import RowSampler
from .vision import Encoding, VisionCache

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    request: EngineRequest
    sampler: RowSampler
    detok: Detokenizer
    deliver: Callable[[list[Event]], None]  # runs on the scheduler thread; the engine bridges it to the event loop
    prepared: Prepared | None = None
    aborted: bool = False  # set from any thread
    row: int | None = None
    last_token: int = -1
    history: list[int] = field(default_factory=list)  # prompt + generated ids, for the repetition penalty
    completion_tokens: int = 0
    prompt_tokens: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float = 0.0
    done: bool = False

    @property
    def reserved_len(self) -> int:
        """The most tokens this request can hold in the KV cache: its prompt plus max_tokens."""
        assert self.prepared is not None
        return self.prepared.length + self.request.sampling.max_tokens

    @property
    def adapter(self) -> str | None:
        return self.request.adapter


class Scheduler:
    def __init__(self, lm: LoadedModel, bank: LoraBank, *, max_rows: int, kv_cache_max_bytes: int,
                 vision_cache_max_bytes: int, on_step: Callable[[StepStats], None] | None = None) -> None:
        self.lm = lm
        self.bank = bank
        self.max_rows = max_rows
        self.kv_cache_max_bytes = kv_cache_max_bytes
        self.on_step = on_step
        self.cache = RowCache(num_layers=lm.num_layers, kv_heads=lm.kv_heads, head_dim=lm.head_dim, dtype=lm.dtype,
                              device=lm.device)
        self.vision = VisionCache(vision_cache_max_bytes)
        self._cond = threading.Condition()
        self._incoming: deque[Sequence] = deque()
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._closing = False
        self.waiting: deque[Sequence] = deque()  # scheduler thread only
        self.running: list[Sequence] = []  # row i of the batch is running[i]
        self._outbox: dict[Sequence, list[Event]] = {}
        self._inter_token: list[float] = []
        self._thread = threading.Thread(target=self._run, name="engine-scheduler", daemon=True)
        self.steps = 0

    # ---- any thread ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the loop on a thread of its own (the engine was built on another thread)."""
        self._thread.start()

    def run_here(self) -> None:
        """Run the loop on the calling thread (the engine's thread, which loaded the model) until ``close``."""
        self._thread = threading.current_thread()
        self._run()

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._closing:
                raise ShuttingDown("the engine is shutting down")
            self._incoming.append(seq)
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the scheduler thread between two forward passes."""
        future: Future[Any] = Future()
        with self._cond:
            if self._closing:
                future.set_exception(ShuttingDown("the engine is shutting down"))
                return future
            self._commands.append((fn, future))
            self._cond.notify()
        return future

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the loop --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._turn():
                pass
        except BaseException:  # a bug in the loop itself: no request may be left without its Finished
            log.exception("the engine's scheduler stopped")
            self._fail_all(InternalError("the engine stopped unexpectedly"))
            raise

    def _turn(self) -> bool:
        with self._cond:
            while not (self._incoming or self._commands or self._closing or self.running or self.waiting):
                self._cond.wait()
            commands = list(self._commands)
            self._commands.clear()
            self.waiting.extend(self._incoming)
            self._incoming.clear()
            closing = self._closing
        self._reap()  # first: a request that was stopped no longer holds its adapter for the commands below
        for fn, future in commands:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)
        if closing:
            self._fail_all(ShuttingDown("the worker is shutting down"))
            return False
        try:
            self._admit()
            if self.running:
                self._decode()
        except Exception as exc:  # e.g. out of memory while growing the KV cache: the batch ends, the engine lives
            log.exception("the running batch failed")
            for seq in list(self.running):
                self._finish(seq, None, InternalError(f"the batch failed: {type(exc).__name__}: {exc}"))
        self._flush()
        return True

    # ---- ending requests -------------------------------------------------------------------------------------
    def _reap(self) -> None:
        for seq in [*self.running, *self.waiting]:
            if seq.aborted:
                self._finish(seq, "cancelled")

    def _finish(self, seq: Sequence, reason: FinishReason | None, error: ServiceError | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        if seq.row is not None:
            moved = self.cache.remove_row(seq.row)
            last = self.running.pop()
            if moved is not None:
                self.running[seq.row] = last
                last.row = seq.row
            seq.row = None
            if not self.running:
                self.cache.release()
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if error is None:
            rest = seq.detok.finish()
            if rest:
                self._emit(seq, TextDelta(rest))
        if seq.prepared is not None:
            seq.prepared.model_inputs.clear()  # the pixels: not needed any more
        self._emit(seq, Finished(
            reason=reason if error is None else None,
            usage=Usage(prompt_tokens=seq.prompt_tokens, completion_tokens=seq.completion_tokens),
            timings=Timings(received_at=seq.request.received_at, scheduled_at=seq.scheduled_at,
                            first_token_at=seq.first_token_at, finished_at=time.perf_counter()),
            error=error,
        ))

    def _fail_all(self, error: ServiceError) -> None:
        with self._cond:
            self.waiting.extend(self._incoming)
            self._incoming.clear()
            self._closing = True
            commands = list(self._commands)
            self._commands.clear()
        for _, future in commands:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        for seq in [*self.running, *self.waiting]:
            self._finish(seq, None, error)
        self.running.clear()
        self.waiting.clear()
        self.cache.lengths.clear()
        self.cache.release()
        self._flush()

    # ---- events ----------------------------------------------------------------------------------------------
    def _emit(self, seq: Sequence, event: Event) -> None:
        self._outbox.setdefault(seq, []).append(event)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for seq, events in outbox.items():
            try:
                seq.deliver(events)
            except Exception:  # the event loop is gone (shutdown): nobody is listening any more
                log.debug("events of %s not delivered", seq.request.request_id, exc_info=True)

    def _accept(self, seq: Sequence, token: int) -> None:
        """A row produced ``token``: stream its text, and end the row when it is finished."""
        now = time.perf_counter()
        seq.completion_tokens += 1
        if seq.first_token_at is None:
            seq.first_token_at = now
        else:
            self._inter_token.append(now - seq.last_token_at)
        seq.last_token_at = now
        if token in self.lm.eos_ids:
            self._finish(seq, "stop")
            return
        text = seq.detok.push(token)
        if text:
            self._emit(seq, TextDelta(text))
        if seq.detok.stopped:
            self._finish(seq, "stop")
        elif seq.completion_tokens >= seq.request.sampling.max_tokens:
            self._finish(seq, "length")
        else:
            seq.last_token = token
            if seq.sampler.needs_history:
                seq.history.append(token)

    def _pick(self, seq: Sequence, logits: torch.Tensor, finite: bool, argmax: int) -> int | None:
        if not finite:
            log.warning("request %s: non-finite logits (adapter %s)", seq.request.request_id, seq.adapter)
            self._finish(seq, None, InternalError(
                "numeric failure: the model produced NaN or infinite logits for this request"))
            return None
        if seq.sampler.plain_greedy:
            return argmax
        history = None
        if seq.sampler.needs_history:
            history = torch.tensor(seq.history, dtype=torch.long, device=logits.device)
        return seq.sampler.pick(logits, history)

    # ---- admission and prefill -------------------------------------------------------------------------------
    def kv_reservation(self, extra: Sequence | None = None) -> int:
        """Bytes the batch (plus ``extra``) may come to hold: rows × the longest row's prompt + max_tokens."""
        seqs = [*self.running, extra] if extra is not None else self.running
        if not seqs:
            return 0
        return len(seqs) * max(s.reserved_len for s in seqs) * self.cache.bytes_per_token

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_rows:
            seq = self.waiting[0]
            # queueing ends where the request's own work starts: its preparation (chat template, image
            # preprocessing), then its prefill; a request prepared earlier that waited for KV memory starts now
            started = time.perf_counter()
            if seq.prepared is None and not self._prepare(seq):
                continue  # it failed and has ended
            if self.kv_reservation(seq) > self.kv_cache_max_bytes:
                if self.running:
                    return  # first come, first served: it waits for rows to leave
                self._finish(seq, None, self._too_big(seq))
                continue
            self.waiting.popleft()
            seq.scheduled_at = started
            self._prefill(seq)
            self._flush()  # the first token leaves now, not after the next decode step

    def _prepare(self, seq: Sequence) -> bool:
        """Chat template, image preprocessing, tokenization; False if the request failed (and has ended)."""
        try:
            seq.prepared = self.lm.prepare(seq.request.turns)
        except ServiceError as exc:
            self._finish(seq, None, exc)
            return False
        except Exception as exc:
            log.exception("preparing %s failed", seq.request.request_id)
            self._finish(seq, None, InternalError(f"preparing the prompt failed: {type(exc).__name__}: {exc}"))
            return False
        if seq.reserved_len * self.cache.bytes_per_token > self.kv_cache_max_bytes:
            self._finish(seq, None, self._too_big(seq))
            return False
        return True

    def _too_big(self, seq: Sequence) -> ServiceError:
        assert seq.prepared is not None
        need = seq.reserved_len * self.cache.bytes_per_token
        return PromptTooLong(
            f"the prompt ({seq.prepared.length} tokens) plus max_tokens ({seq.request.sampling.max_tokens}) need "
            f"{need / 2**20:.1f} MiB of KV cache, more than KV_CACHE_MAX_BYTES allows "
            f"({self.kv_cache_max_bytes / 2**20:.1f} MiB)",
        )

    def _prefill(self, seq: Sequence) -> None:
        prepared = seq.prepared
        assert prepared is not None
        seq.prompt_tokens = prepared.length
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                prefill_cache, logits = self._run_prefill(seq, prepared)
                logits = logits.float()
                finite = bool(torch.isfinite(logits).all())
                token = self._pick(seq, logits, finite, int(logits.argmax()) if finite else -1)
        except ServiceError as exc:
            self._finish(seq, None, exc)
            return
        except Exception as exc:
            log.exception("prefill of %s failed", seq.request.request_id)
            self._finish(seq, None, InternalError(f"prefill failed: {type(exc).__name__}: {exc}"))
            return
        if self.on_step is not None:
            self.on_step(StepStats("prefill", rows=1, tokens=prepared.length, seconds=time.perf_counter() - started))
        if token is None:  # failed in _pick
            return
        longest = max((s.reserved_len for s in self.running), default=0)
        try:
            self.cache.ensure(len(self.running) + 1, prepared.length + 1, max_rows=self.max_rows,
                              max_len=max(longest, seq.reserved_len))
        except Exception as exc:  # out of memory: this request cannot join; the batch goes on
            log.exception("no KV memory for %s", seq.request.request_id)
            self._finish(seq, None, InternalError(f"no memory for this request's KV cache: {type(exc).__name__}"))
            return
        seq.row = self.cache.add_row(prefill_cache)
        self.running.append(seq)
        if seq.sampler.needs_history:
            seq.history = prepared.input_ids[0].tolist()
        self._accept(seq, token)

    def _run_prefill(self, seq: Sequence, prepared: Prepared) -> tuple[Any, torch.Tensor]:
        from transformers import DynamicCache

        model = self.lm.model
        inputs = dict(prepared.model_inputs)
        pixel_values = inputs.pop("pixel_values", None)
        if pixel_values is not None:
            inputs["mm_encoder_outputs"] = {"image": self._encode_images(seq, prepared, pixel_values)}
        cache = DynamicCache(config=model.config)
        with self.bank.mapping(LoraMapping(uniform=seq.adapter)):
            out = model(input_ids=prepared.input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1,
                        **inputs)
        return cache, out.logits[0, -1]

    def _encode_images(self, seq: Sequence, prepared: Prepared, pixel_values: torch.Tensor) -> Any:
        weights = self.bank.adapters.get(seq.adapter) if seq.adapter is not None else None
        vision_adapter = seq.adapter if weights is not None and weights.vision else None
        assert prepared.image_key is not None
        key = (prepared.image_key, vision_adapter)
        encoding = self.vision.get(key)
        if encoding is None:
            with self.bank.mapping(LoraMapping(uniform=vision_adapter)):
                output = self.lm.model.model.get_image_features(
                    pixel_values, prepared.model_inputs["image_grid_thw"], return_dict=True)
            encoding = Encoding.of(output)
            self.vision.put(key, encoding)
        return encoding

    # ---- one decode step -------------------------------------------------------------------------------------
    def _decode(self) -> None:
        started = time.perf_counter()
        running = list(self.running)
        n = len(running)
        device = self.lm.device
        longest = max(s.reserved_len for s in running)
        self.cache.ensure(n, max(self.cache.lengths) + 1, max_rows=self.max_rows, max_len=longest)
        mask, positions = self.cache.begin_step()
        input_ids = torch.tensor([[s.last_token] for s in running], dtype=torch.long, device=device)
        if self.lm.info.vision:
            deltas = torch.tensor([s.prepared.rope_delta for s in running],  # type: ignore[union-attr]
                                  dtype=torch.long, device=device)
            rope = (positions + deltas).view(1, n, 1).expand(3, n, 1)
            position_ids = torch.cat([positions.view(1, n, 1), rope], dim=0)
        else:
            position_ids = positions.view(n, 1)
        mapping = LoraMapping.for_rows([s.adapter for s in running], device)
        try:
            with torch.inference_mode(), self.bank.mapping(mapping):
                out = self.lm.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                    past_key_values=self.cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float()
            finite = torch.isfinite(logits).all(dim=-1).tolist()
            argmax = logits.argmax(dim=-1).tolist()
        except Exception as exc:
            log.exception("decode step of %d rows failed", n)
            self.cache.end_step()
            for seq in running:
                self._finish(seq, None, InternalError(f"decode step failed: {type(exc).__name__}: {exc}"))
            return
        self.cache.end_step()
        self.steps += 1
        picks: list[tuple[Sequence, int | None]] = []
        for i, seq in enumerate(running):
            try:
                picks.append((seq, self._pick(seq, logits[i], finite[i], argmax[i])))
            except Exception as exc:
                log.exception("sampling for %s failed", seq.request.request_id)
                self._finish(seq, None, InternalError(f"sampling failed: {type(exc).__name__}: {exc}"))
        for seq, token in picks:
            if token is not None and not seq.done:
                self._accept(seq, token)
        gaps, self._inter_token = tuple(self._inter_token), []
        if self.on_step is not None:
            self.on_step(StepStats("decode", rows=n, tokens=n, seconds=time.perf_counter() - started,
                                   inter_token_s=gaps))
