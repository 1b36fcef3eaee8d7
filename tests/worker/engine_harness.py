"""Driving an engine in-process: request builders, collecting a stream, and the transformers + PEFT reference."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from inference_worker.engines.base import ChatTurn, EngineRequest, Finished, SamplingParams, TextDelta

_ids = itertools.count()


def request(text: str = "Describe the process.", *, images: tuple[Any, ...] = (), adapter: str | None = None,
            max_tokens: int = 24, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
            repetition_penalty: float | None = None, seed: int = 0, stop: tuple[str, ...] = (),
            system: str | None = None) -> EngineRequest:
    turns = ((ChatTurn("system", system),) if system else ()) + (ChatTurn("user", text, images),)
    return EngineRequest(
        request_id=f"t{next(_ids)}", turns=turns,
        sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty, seed=seed, max_tokens=max_tokens, stop=stop),
        adapter=adapter, received_at=time.perf_counter(),
    )


@dataclass
class Outcome:
    pieces: list[str]
    finished: Finished
    events_after_finish: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def tokens(self) -> int:
        return self.finished.usage.completion_tokens


async def collect(engine: Any, req: EngineRequest, *, on_piece: Any = None) -> Outcome:
    pieces: list[str] = []
    finished: Finished | None = None
    after = 0
    async for event in engine.generate(req):
        if finished is not None:
            after += 1
        if isinstance(event, TextDelta):
            assert event.text, "text deltas are never empty"
            pieces.append(event.text)
            if on_piece is not None:
                on_piece(len(pieces))
        else:
            assert isinstance(event, Finished)
            finished = event
    assert finished is not None, "every stream ends with Finished"
    return Outcome(pieces, finished, after)


async def collect_all(engine: Any, reqs: list[EngineRequest]) -> list[Outcome]:
    return list(await asyncio.gather(*(collect(engine, r) for r in reqs)))


def picture(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A small deterministic picture with some structure (boxes on a colored background)."""
    from PIL import ImageDraw

    img = Image.new("RGB", size, ((seed * 70) % 255, (seed * 130) % 255, (seed * 190) % 255))
    draw = ImageDraw.Draw(img)
    for i in range(3):
        x = (seed * 17 + i * 29) % (size[0] - 20)
        draw.rectangle([x, 10 + i * 20, x + 18, 24 + i * 20], outline=(255, 255, 255), width=2)
    return img


class Reference:
    """transformers' ``generate`` on the same checkpoint, with PEFT for adapters: what a user runs in-process."""

    def __init__(self, model_dir: Path, adapters: dict[str, Path]) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(str(model_dir))
        base = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.model: Any = base
        self.peft = None
        for name, path in adapters.items():
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(base, str(path), adapter_name=name)
            else:
                self.peft.load_adapter(str(path), adapter_name=name)

    def generate(self, req: EngineRequest, min_pixels: int = 64 * 64, max_pixels: int = 1024 * 32 * 32) -> str:
        from qwen_vl_utils import process_vision_info

        messages = []
        for turn in req.turns:
            content: list[dict[str, Any]] = [
                {"type": "image", "image": img, "min_pixels": min_pixels, "max_pixels": max_pixels}
                for img in turn.images
            ]
            content.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": content})
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, _ = process_vision_info(messages, image_patch_size=self.processor.image_processor.patch_size)
        inputs = self.processor(text=[text], images=images, return_tensors="pt", do_resize=False)
        model = self.model
        if req.adapter is not None:
            assert self.peft is not None
            self.peft.set_adapter(req.adapter)
            model = self.peft
        with self.torch.inference_mode():
            if req.adapter is None and self.peft is not None:
                with self.peft.disable_adapter():
                    out = self.peft.generate(**inputs, max_new_tokens=req.sampling.max_tokens, do_sample=False)
            else:
                out = model.generate(**inputs, max_new_tokens=req.sampling.max_tokens, do_sample=False)
        return str(self.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
