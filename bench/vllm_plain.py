"""Plain vLLM ``AsyncLLM``, no worker in front: figure 7's reference. Runs in the vLLM venv (figure 7 starts it as a
subprocess) and prints one JSON object on its last line.

The engine is built with the worker's own engine arguments (``engine_kwargs``, from the same settings) and the
prompts with the worker's own chat template and image resizing (``chat_prompt``), so the two differ only by what the
worker adds: the WebSocket protocol, validation, the adapter registry, the event bridge. Each client is a task that
sends its requests one after another, each with its adapter (a ``LoRARequest`` on the adapter's directory);
time to first token is to the first non-empty text delta, as a WebSocket client sees its first token message.

    .venv-vllm/bin/python -m bench.vllm_plain --model DIR --adapters '{"bench-a": "/path", ...}' --mix bench-a,,...
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from PIL import Image
    from transformers import AutoTokenizer
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from inference_worker.config import Settings
    from inference_worker.engines.base import ChatTurn
    from inference_worker.engines.vllm.inputs import chat_prompt
    from inference_worker.engines.vllm.model_files import engine_kwargs, read_model_files

    settings = Settings(model_name=str(args.model), max_batch_rows=args.max_batch_rows,
                        vllm_max_loras=args.max_loras, vllm_max_lora_rank=args.max_lora_rank)
    files = read_model_files(str(args.model))
    started = time.perf_counter()
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(settings, files, "cpu")))
    start_s = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    images = (Image.open(io.BytesIO(args.image.read_bytes())).convert("RGB"),) if args.image else ()
    vision = files.config.get("vision_config") or {}
    factor = int(vision.get("patch_size", 16)) * int(vision.get("spatial_merge_size", 2))
    paths: dict[str, str] = json.loads(args.adapters)
    loras = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(sorted(paths.items()))}
    mix = [name or None for name in args.mix.split(",")]
    counter = 0

    async def one(adapter: str | None) -> dict[str, Any]:
        nonlocal counter
        counter += 1
        t0 = time.perf_counter()
        prompt, _ = await asyncio.to_thread(
            chat_prompt, tokenizer, (ChatTurn("user", args.prompt, images),), vision=files.vision,
            model=str(args.model), image_factor=factor, min_pixels=settings.image_min_pixels,
            max_pixels=settings.image_max_pixels, max_prompt_tokens=settings.max_prompt_tokens)
        params = SamplingParams(temperature=0, max_tokens=args.tokens, output_kind=RequestOutputKind.DELTA)
        first = None
        pieces: list[str] = []
        tokens = 0
        async for out in llm.generate(prompt, params, f"plain-{counter}",
                                      lora_request=loras[adapter] if adapter else None):
            piece = out.outputs[0]
            tokens += len(piece.token_ids)
            if piece.text:
                if first is None:
                    first = time.perf_counter() - t0
                pieces.append(piece.text)
        return {"ttft": first, "tokens": tokens, "text": "".join(pieces), "adapter": adapter}

    async def client(i: int) -> list[dict[str, Any]]:
        return [await one(mix[i % len(mix)]) for _ in range(args.requests_per_client)]

    async def round_(clients: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
        flat = [r for rs in results for r in rs]
        return {"wall": wall, "tokens": sum(r["tokens"] for r in flat), "results": flat}

    levels = [int(x) for x in args.clients.split(",")]
    out: dict[str, Any] = {"start_s": start_s, "levels": {}}
    try:
        for _ in range(args.warmup):
            await round_(max(levels))
        for c in levels:
            out["levels"][str(c)] = [await round_(c) for _ in range(args.trials)]
    finally:
        llm.shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.vllm_plain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--adapters", required=True, help="JSON object: adapter name → directory")
    p.add_argument("--mix", required=True, help="comma-separated adapter of client i (empty: the base model)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", type=Path, help="PNG sent with every request")
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--clients", default="1,8")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-batch-rows", type=int, default=8)
    p.add_argument("--max-loras", type=int, default=4)
    p.add_argument("--max-lora-rank", type=int, default=16)
    args = p.parse_args()
    result = asyncio.run(_main(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
