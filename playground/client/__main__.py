"""``python -m playground.client``: send an image and a prompt to the worker and stream the answer (see ``--help``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diagrams import DiagramError, RendererMissing, describe_kinds, kind_of, render_async
from wire.protocol import AdapterLoaded, Done

from . import (
    DEFAULT_URL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    UNSET,
    PlaygroundError,
    WorkerClient,
    describe_progress,
    exit_status,
    user_message,
)

_EPILOG = """\
The answer streams to stdout; adapter loading progress and a final line of timings (time to first token,
tokens/s, tokens, finish reason, adapter) go to stderr. Exit status: 0 done, 1 failed, 2 bad arguments,
75 temporary failure (worker down, loading or busy: try again later), 130 interrupted.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m playground.client",
        description="Send an image and a prompt to the inference worker and stream the answer.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompt", help="the instruction, e.g. 'Describe this diagram as a Markdown table'")
    parser.add_argument("--image", action="append", type=Path, default=[], metavar="FILE",
                        help="PNG, JPEG or WebP image, sent before the prompt (repeatable); a diagram source is "
                             f"drawn as PNG first: {describe_kinds()}")
    parser.add_argument("--adapter", help="LoRA adapter to use (default: the base model)")
    parser.add_argument("--url", default=os.environ.get("INFERENCE_WS_URL", DEFAULT_URL),
                        help="worker URL (default: $INFERENCE_WS_URL or %(default)s)")
    parser.add_argument("--token", default=os.environ.get("INFERENCE_AUTH_TOKEN"),
                        help="auth token (default: $INFERENCE_AUTH_TOKEN)")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 is greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--repetition-penalty", type=float)
    return parser


def format_timings(done: Done) -> str:
    """One line: time to first token, tokens/s, tokens, finish reason, adapter, total."""
    t = done.timings
    ttft = f"{t.ttft_ms:.1f} ms" if t.ttft_ms is not None else "-"
    speed = f"{t.tokens_per_s:.1f}" if t.tokens_per_s is not None else "-"
    return (f"ttft {ttft} | {speed} tokens/s | {done.usage.completion_tokens} tokens | "
            f"finish {done.finish_reason} | adapter {done.adapter or 'base model'} | total {t.total_ms:.1f} ms")


async def _run_cli(args: argparse.Namespace, out: Any, err: Any) -> int:
    images = []
    for path in args.image:
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"error: cannot read image {str(path)!r}: {exc.strerror or exc}", file=err)
            return EXIT_USAGE
        if kind_of(path.name) is not None:  # a diagram source: drawn here (on a thread), the worker gets a picture
            try:
                rendered = await render_async(data, name=path.name)
            except RendererMissing as exc:  # not the user's mistake: this machine lacks a program (make renderers)
                print(f"error: {path.name}: {exc}", file=err)
                return EXIT_UNAVAILABLE
            except DiagramError as exc:
                print(f"error: {path.name}: {exc}", file=err)
                return EXIT_USAGE
            print(f"{path.name}: {rendered.describe()}", file=err, flush=True)
            data = rendered.png
        images.append(data)
    messages = [user_message(args.prompt, images=images)]
    async with WorkerClient(args.url, token=args.token) as client:
        if args.adapter:
            loaded = await client.load_adapter(
                args.adapter, on_progress=lambda p: print(f"adapter {p.adapter_path}: {describe_progress(p)}",
                                                          file=err, flush=True))
            if isinstance(loaded, AdapterLoaded):
                print(f"adapter {loaded.name or loaded.adapter_path} (rank {loaded.rank}, "
                      f"{'cached' if loaded.cached else 'fetched'}, {loaded.load_ms} ms)", file=err, flush=True)
        ended_with_newline = True
        async for item in client.generate(
            messages, system_prompt=args.system, max_tokens=args.max_tokens, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, seed=args.seed, repetition_penalty=args.repetition_penalty,
            adapter=args.adapter if args.adapter else UNSET,
        ):
            if isinstance(item, Done):
                if not ended_with_newline:
                    out.write("\n")
                out.flush()
                print(format_timings(item), file=err, flush=True)
            elif item:
                out.write(item)
                out.flush()
                ended_with_newline = item.endswith("\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run_cli(args, sys.stdout, sys.stderr))
    except PlaygroundError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
