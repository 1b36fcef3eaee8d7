"""The baseline: what users have today — the model in-process, PEFT for adapters, ``model.generate`` with a
``TextIteratorStreamer``, one request at a time.

``generate`` runs on the calling thread (the one that loaded the models) and the stream is read on a helper thread.
The pattern in the transformers docs — ``generate`` on a new ``Thread`` per request — was about 1.5× slower on the
2-vCPU machines this project is measured on: once two threads have run parallel torch ops, the process holds two
OpenMP teams on two cores, and libgomp then stops spin-waiting between parallel regions. The benchmark compares the
worker with the faster in-process variant.

Two model instances are kept: the plain model exactly as ``from_pretrained`` returns it (the base-model baseline),
and a second one wrapped by ``PeftModel.from_pretrained`` with the benchmark's adapters (``load_adapter`` for the
others, ``set_adapter`` to switch). The PEFT instance runs without the worker's ``lm_head`` fix unless
:meth:`InProcess.lm_head_fix` is active, so the cost that fix removes shows up as a number.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import BenchError, Request, Trial


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _streamer_class() -> type:
    from transformers import TextIteratorStreamer

    class TimedStreamer(TextIteratorStreamer):
        """A TextIteratorStreamer (as users have it) that also records when each generated token arrives."""

        def __init__(self, tokenizer: Any) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
            self.token_times: list[float] = []
            self.first_piece_token: int | None = None  # tokens generated when the first text was released

        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt:
                self.token_times.append(time.perf_counter())
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text and self.first_piece_token is None:
                self.first_piece_token = len(self.token_times)
            super().on_finalized_text(text, stream_end)

    return TimedStreamer


class InProcess:
    """The in-process baseline for one checkpoint."""

    def __init__(self, model_dir: Path, *, device: str, dtype: str, plain: bool = True) -> None:
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )

        self.model_dir = Path(model_dir)
        self.device = device
        self.dtype = dtype
        config = AutoConfig.from_pretrained(model_dir)
        self.vision = hasattr(config, "vision_config")
        self._cls = AutoModelForImageTextToText if self.vision else AutoModelForCausalLM
        self.model: Any = self._load() if plain else None  # None: only the PEFT instance is wanted
        if self.vision:
            self.processor = AutoProcessor.from_pretrained(model_dir)
            self.tokenizer = self.processor.tokenizer
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.peft: Any = None
        self._streamer_cls = _streamer_class()
        self._fix_handle: Any = None

    def _load(self) -> Any:
        kwargs: dict[str, Any] = {"dtype": torch_dtype(self.dtype)}
        if self.device == "cuda":
            kwargs["device_map"] = "cuda"
        model = self._cls.from_pretrained(self.model_dir, **kwargs)
        if self.device != "cuda":
            model.to(self.device)  # type: ignore[arg-type]
        model.eval()
        return model

    # ---- PEFT ----------------------------------------------------------------------------------------------------
    def load_peft(self, adapters: dict[str, Path]) -> None:
        """A second model instance with ``adapters`` loaded the way PEFT users do it."""
        from peft import PeftModel

        if not adapters:
            raise ValueError("load_peft needs at least one adapter")
        items = list(adapters.items())
        first_name, first_path = items[0]
        self.peft = PeftModel.from_pretrained(self._load(), str(first_path), adapter_name=first_name)
        for name, path in items[1:]:
            self.peft.load_adapter(str(path), adapter_name=name)
        self.peft.eval()

    def unload_peft(self) -> None:
        self.peft = None

    @contextlib.contextmanager
    def lm_head_fix(self) -> Iterator[None]:
        """The worker's fix on the PEFT model while active: ``lm_head`` gets a contiguous clone of its input."""
        import torch

        head = self.peft.get_output_embeddings()

        def contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])

        handle = head.register_forward_pre_hook(contiguous_input)
        try:
            yield
        finally:
            handle.remove()

    # ---- generation ----------------------------------------------------------------------------------------------
    def _inputs(self, request: Request) -> Any:
        if self.vision:
            from PIL import Image

            content: list[dict[str, Any]] = []
            if request.image_png is not None:
                image = Image.open(io.BytesIO(request.image_png)).convert("RGB")
                content.append({"type": "image", "image": image})
            content.append({"type": "text", "text": request.text})
            messages = [{"role": "user", "content": content}]
            inputs = self.processor.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
            )
        else:
            if request.image_png is not None:
                raise BenchError(f"{self.model_dir} is a text-only model: the request must not carry an image")
            messages = [{"role": "user", "content": request.text}]
            inputs = self.tokenizer.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
            )
        return inputs.to((self.model if self.model is not None else self.peft).device)

    def generate(self, request: Request, *, peft: bool = False, adapter: str | None = None,
                 switch_to: str | None = None, started: float | None = None) -> Trial:
        """One greedy generation, timed from ``started`` (default: now) to the end of the stream.

        ``peft``: use the PEFT instance with ``adapter`` active (None: its adapters disabled). ``switch_to``:
        call ``set_adapter`` inside the timed region first (a hot swap, as PEFT users do it).
        """
        t0 = time.perf_counter() if started is None else started
        model = self.peft if peft else self.model
        if peft and switch_to is not None:
            model.set_adapter(switch_to)
        elif peft and adapter is not None and model.active_adapter != adapter:
            model.set_adapter(adapter)
        inputs = self._inputs(request)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        streamer = self._streamer_cls(self.tokenizer)
        seen: dict[str, Any] = {"first": None, "pieces": [], "end": None}

        def consume() -> None:  # the caller's side of the stream: no torch here
            for piece in streamer:
                if piece:
                    if seen["first"] is None:
                        seen["first"] = time.perf_counter()
                    seen["pieces"].append(piece)
            seen["end"] = time.perf_counter()

        consumer = threading.Thread(target=consume, name="baseline-stream", daemon=True)
        consumer.start()
        out: dict[str, Any] = {}
        try:
            disabled = model.disable_adapter() if peft and adapter is None and switch_to is None else None
            with disabled if disabled is not None else contextlib.nullcontext():
                out["ids"] = model.generate(**inputs, max_new_tokens=request.max_tokens, do_sample=False,
                                            streamer=streamer)
        except BaseException as exc:
            out["error"] = exc
            streamer.end()
        consumer.join()
        first_piece: float | None = seen["first"]
        pieces: list[str] = seen["pieces"]
        end = seen["end"] if seen["end"] is not None else time.perf_counter()
        if "error" in out:
            raise BenchError(f"in-process generate failed: {out['error']!r}") from out["error"]
        tokens = int(out["ids"].shape[1]) - prompt_tokens
        times = streamer.token_times
        decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        return Trial(
            ttft_piece_s=first_piece - t0 if first_piece is not None else None,
            ttft_token_s=times[0] - t0 if times else None,
            end_s=end - t0,
            tokens=tokens,
            prompt_tokens=prompt_tokens,
            text="".join(pieces),
            decode_tps_token=decode,
            extra={"first_piece_token": streamer.first_piece_token},
        )

    # ---- adapter load/unload (memory and cold-load baselines) -----------------------------------------------------
    def load_adapter(self, name: str, path: Path) -> float:
        started = time.perf_counter()
        self.peft.load_adapter(str(path), adapter_name=name)
        return time.perf_counter() - started

    def delete_adapter(self, name: str) -> None:
        self.peft.delete_adapter(name)
