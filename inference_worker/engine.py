"""The model: loading (the real ``from_pretrained`` path), prompt preparation, and generation in a worker thread.

``Engine.generate`` is blocking and runs on a generation thread; it reports text through ``Job.on_text`` (called
from that thread) and returns a :class:`Result`. Several generations may run at once on the one shared model:
the adapter each one uses is thread-local (see ``lora.py``), and the KV cache and position ids are per call.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, InputError, InternalError
from .stops import StopMatcher

log = logging.getLogger(__name__)


@dataclass
class ChatTurn:
    role: str
    text: str
    images: list[Any] = field(default_factory=list)  # decoded RGB PIL images, in order, before the text


@dataclass
class Sampling:
    temperature: float  # 0: greedy
    top_k: int | None
    top_p: float | None
    repetition_penalty: float | None
    seed: int


@dataclass
class Job:
    turns: list[ChatTurn]
    max_new_tokens: int
    sampling: Sampling
    stop: list[str]
    adapter: str | None  # the PEFT name of the adapter, None for the base model
    cancel: threading.Event
    on_text: Callable[[str], None]  # called on the generation thread with each non-empty piece
    on_token: Callable[[float], None] | None = None  # called with the time of each generated token


@dataclass
class Result:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled
    first_token_at: float | None
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    model_type: str
    device: str
    dtype: str
    vision: bool
    load_seconds: float
    parameters: int


def pick_device(requested: str) -> str:
    """The device to run on: the requested one when it is available, else CPU (with a warning)."""
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return "cuda" if available["cuda"] else "mps" if available["mps"] else "cpu"
    if not available.get(requested, False):
        log.warning("DEVICE=%s is not available here; falling back to cpu", requested)
        return "cpu"
    return requested


def pick_dtype(requested: str, device: str) -> Any:
    """The torch dtype: ``auto`` is one that works and is fast on the device."""
    import torch

    if requested != "auto":
        dtype = getattr(torch, requested)
        if device == "cpu" and dtype == torch.float16:
            log.warning("float16 is slow and poorly supported on CPU; using it anyway as TORCH_DTYPE asks")
        return dtype
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def _is_vision_model(config: Any) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


class _CancelCriteria:
    """Stops ``generate`` one token after the job is cancelled or a stop string was seen."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _SeededSampler:
    """Samples the next token with a per-request generator, so a seed reproduces under concurrency.

    Runs last in the logits processor chain and returns scores where only the sampled token is finite; greedy
    selection then picks it. (``torch.multinomial`` with the global RNG would mix the streams of concurrent
    requests.)
    """

    def __init__(self, seed: int, device: Any) -> None:
        import torch

        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float(), dim=-1)
        chosen = torch.multinomial(probs, 1, generator=self.generator)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen, 0.0)


def _make_streamer_class() -> type:
    from transformers import TextIteratorStreamer

    class Streamer(TextIteratorStreamer):
        """TextIteratorStreamer that hands each finalised piece to a callback instead of a blocking queue."""

        def __init__(self, tokenizer: Any, emit: Callable[[str], None], on_token: Callable[[], None]) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self._emit = emit
            self._on_token = on_token

        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt:
                self._on_token()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:  # the streamer produces many empty pieces: drop them
                self._emit(text)

    return Streamer


class Engine:
    """One base model (Qwen3-VL or a text-only causal LM) and the way to generate with it."""

    def __init__(self, model: Any, processor: Any, tokenizer: Any, info: ModelInfo, image_min_pixels: int,
                 image_max_pixels: int, max_prompt_tokens: int) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.info = info
        self.image_min_pixels = image_min_pixels
        self.image_max_pixels = image_max_pixels
        self.max_prompt_tokens = max_prompt_tokens
        self._streamer_cls = _make_streamer_class()
        gen = getattr(model, "generation_config", None)
        self._eos = getattr(gen, "eos_token_id", None)
        self._pad = getattr(gen, "pad_token_id", None)
        self._bos = getattr(gen, "bos_token_id", None)
        self.defaults = self._sampling_defaults(gen)
        # A byte-level token's vocabulary entry has one character per byte, so its length bounds the characters
        # it can decode to.
        self._longest_token = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1

    # ---- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, *, device: str = "auto", dtype: str = "auto", image_min_pixels: int = 64 * 64,
             image_max_pixels: int = 1024 * 32 * 32, max_prompt_tokens: int = 16384) -> Engine:
        """Load ``name`` (hub id or directory) with ``from_pretrained``: the path real and demo models share."""
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )

        started = time.perf_counter()
        device = pick_device(device)
        torch_dtype = pick_dtype(dtype, device)
        config = AutoConfig.from_pretrained(name)
        vision = _is_vision_model(config)
        model_cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        log.info("loading %s (%s) on %s as %s", name, config.model_type, device, str(torch_dtype).replace("torch.", ""))
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if device == "cuda":
            kwargs["device_map"] = "cuda"
        model = model_cls.from_pretrained(name, **kwargs)
        if device != "cuda":
            model.to(device)  # type: ignore[arg-type]
        model.eval()
        model.requires_grad_(False)
        if vision:
            processor = AutoProcessor.from_pretrained(name)
            tokenizer = processor.tokenizer
        else:
            processor = None
            tokenizer = AutoTokenizer.from_pretrained(name)
        _install_lm_head_fix(model)
        info = ModelInfo(
            name=name,
            model_type=config.model_type,
            device=device,
            dtype=str(torch_dtype).replace("torch.", ""),
            vision=vision,
            load_seconds=time.perf_counter() - started,
            parameters=sum(p.numel() for p in model.parameters()),
        )
        log.info("model loaded in %.2f s (%d parameters)", info.load_seconds, info.parameters)
        return cls(model, processor, tokenizer, info, image_min_pixels, image_max_pixels, max_prompt_tokens)

    @staticmethod
    def _sampling_defaults(gen: Any) -> dict[str, Any]:
        """The model's own sampling defaults (its generation_config), used for parameters a request omits."""
        if gen is None or not getattr(gen, "do_sample", False):
            return {"temperature": 0.0, "top_k": None, "top_p": None, "repetition_penalty": None}
        return {
            "temperature": gen.temperature if gen.temperature is not None else 1.0,
            "top_k": gen.top_k,
            "top_p": gen.top_p,
            "repetition_penalty": gen.repetition_penalty,
        }

    def sampling(self, *, temperature: float | None, top_k: int | None, top_p: float | None,
                 repetition_penalty: float | None, seed: int | None) -> Sampling:
        d = self.defaults
        return Sampling(
            temperature=d["temperature"] if temperature is None else temperature,
            top_k=d["top_k"] if top_k is None else top_k,
            top_p=d["top_p"] if top_p is None else top_p,
            repetition_penalty=d["repetition_penalty"] if repetition_penalty is None else repetition_penalty,
            seed=secrets.randbelow(2**63) if seed is None else seed,
        )

    # ---- prompts ---------------------------------------------------------------------------------------------
    def check_text_length(self, turns: list[ChatTurn]) -> None:
        """Refuse, without tokenizing, text that cannot fit in MAX_PROMPT_TOKENS whatever the tokenization.

        No token is longer than the longest entry of the vocabulary, so more characters than
        ``max_prompt_tokens × that length`` is certainly too long; this keeps a multi-megabyte string from occupying
        a generation thread in the tokenizer.
        """
        chars = sum(len(t.text) for t in turns)
        if chars > self.max_prompt_tokens * self._longest_token:
            raise InputError(
                f"prompt is {chars} characters, more than {self.max_prompt_tokens} tokens can hold",
                code=ErrorCode.PROMPT_TOO_LONG,
            )

    def prepare(self, turns: list[ChatTurn]) -> dict[str, Any]:
        """Chat template + images → model inputs on the device. Blocking."""
        self.check_text_length(turns)
        if self.info.vision:
            inputs = self._prepare_vision(turns)
        else:
            if any(t.images for t in turns):
                raise InputError(f"{self.info.name} is a text-only model: it cannot read images",
                                 code=ErrorCode.IMAGES_NOT_SUPPORTED)
            messages = [{"role": t.role, "content": t.text} for t in turns]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = self.tokenizer([text], return_tensors="pt", add_special_tokens=False)
        length = int(inputs["input_ids"].shape[1])
        if length > self.max_prompt_tokens:
            raise InputError(
                f"prompt is {length} tokens (images included), over the limit of {self.max_prompt_tokens}",
                code=ErrorCode.PROMPT_TOO_LONG,
            )
        return {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in inputs.items()}

    def _prepare_vision(self, turns: list[ChatTurn]) -> Any:
        from qwen_vl_utils import process_vision_info

        messages = []
        for turn in turns:
            content: list[dict[str, Any]] = [
                {"type": "image", "image": img, "min_pixels": self.image_min_pixels,
                 "max_pixels": self.image_max_pixels}
                for img in turn.images
            ]
            if turn.text or not content:
                content.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": content})
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        patch = getattr(self.processor.image_processor, "patch_size", 16)
        images, _videos = process_vision_info(messages, image_patch_size=patch)
        return self.processor(text=[text], images=images, return_tensors="pt", do_resize=False)

    # ---- generation ------------------------------------------------------------------------------------------
    def generate(self, job: Job, inputs: dict[str, Any] | None = None) -> Result:
        """Run one generation to completion on this thread. ``job.on_text`` receives the streamed pieces."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
        from transformers.generation.logits_process import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        started = time.perf_counter()
        if inputs is None:
            inputs = self.prepare(job.turns)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        stop_hit = threading.Event()
        matcher = StopMatcher(job.stop)
        first_token_at: list[float] = []

        def emit(text: str) -> None:
            if stop_hit.is_set():
                return
            out = matcher.feed(text)
            if out:
                job.on_text(out)
            if matcher.stopped:
                stop_hit.set()

        def on_token() -> None:
            now = time.perf_counter()
            if not first_token_at:
                first_token_at.append(now)
            if job.on_token is not None:
                job.on_token(now)

        streamer = self._streamer_cls(self.tokenizer, emit, on_token)
        s = job.sampling
        processors = LogitsProcessorList()
        if s.repetition_penalty is not None and s.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
        if s.temperature > 0:
            if s.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(s.temperature))
            if s.top_k:
                processors.append(TopKLogitsWarper(s.top_k))
            if s.top_p is not None and s.top_p < 1.0:
                processors.append(TopPLogitsWarper(s.top_p))
            processors.append(_SeededSampler(s.seed, self.model.device))
        config = GenerationConfig(
            max_new_tokens=job.max_new_tokens,
            do_sample=False,
            eos_token_id=self._eos,
            pad_token_id=self._pad,
            bos_token_id=self._bos,
        )
        from .lora import active_adapter

        try:
            with active_adapter(job.adapter), torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    generation_config=config,
                    logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([_CancelCriteria(job.cancel, stop_hit)]),
                    streamer=streamer,
                )
        except InputError:
            raise
        except Exception as exc:  # a failure inside generate: report it, keep serving
            log.exception("generation failed")
            raise InternalError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        if not stop_hit.is_set():
            rest = matcher.flush()
            if rest:
                job.on_text(rest)
        completion = int(output.shape[1]) - prompt_tokens
        if job.cancel.is_set() and not stop_hit.is_set():
            reason = "cancelled"
        elif stop_hit.is_set():
            reason = "stop"
        elif completion >= job.max_new_tokens and not self._ended_with_eos(output):
            reason = "length"
        else:
            reason = "stop"
        return Result(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            finish_reason=reason,
            first_token_at=first_token_at[0] if first_token_at else None,
            started_at=started,
            finished_at=time.perf_counter(),
        )

    def _ended_with_eos(self, output: Any) -> bool:
        eos = self._eos if isinstance(self._eos, list) else [self._eos]
        return int(output[0, -1]) in [e for e in eos if e is not None]


def _install_lm_head_fix(model: Any) -> None:
    """Feed ``lm_head`` a contiguous copy of its input.

    Once the base weights are frozen (as for LoRA serving), the last-token slice fed to a frozen, tied ``lm_head``
    takes a slow matmul path that copies the whole weight on every prompt (measured: 2B time to first token 2 s →
    6 s on CPU). A contiguous clone of the (tiny) input restores the fast path; ``.contiguous()`` does not.
    """
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return

    def _contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])

    head.register_forward_pre_hook(_contiguous_input)


def configure_hf_home(hf_home: os.PathLike[str] | str | None) -> None:
    """Point the Hugging Face cache at ``hf_home`` (must run before transformers is imported)."""
    if hf_home:
        os.environ["HF_HOME"] = str(hf_home)
