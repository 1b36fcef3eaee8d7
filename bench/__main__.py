"""``python -m bench``: run the figures, print one table, write ``results.md`` and ``results.json``.

    python -m bench --quick                 # tiny + mid, few trials: a few minutes on 2 CPU cores
    python -m bench                         # tiny + mid, full trials, and the 2B-sized cold load
    python -m bench --size 2b               # the Qwen3-VL-2B architecture (random weights; for a GPU machine)
    python -m bench --model /models/qwen3-vl-2b-instruct --figures 1,2
    python -m bench --size mid --figures 8  # the Ray Serve path beside the in-process worker (starts a local cluster)
    python -m bench --size mid --figures 9  # streaming over HTTP (SSE) beside the WebSocket, on the same worker
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .figures import (
    Options,
    Run,
    Target,
    figure1,
    figure2,
    figure3_cold,
    figure3_swap,
    figure4,
    figure5,
    figure6,
    figure7,
    figure8,
    figure9,
    finite,
    say,
)
from .models import SIZES, default_cache_dir
from .report import DEFAULT_FIGURES, FIGURES, Row, machine_info, render_markdown, write_results

# Each preset: what a mode measures. Flags given explicitly override them.
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(sizes=["tiny", "mid"], trials=7, tokens=32, image_side=256, swap_trials=30,
                 clients=[1, 2, 4, 8, 16], requests_per_client=2, concurrency_trials=3, concurrency_tokens=128,
                 cycles=200, cold_trials=5,
                 cold_size="2b", warmup=3, lora_2b=True),
    "quick": dict(sizes=["tiny", "mid"], trials=3, tokens=16, image_side=256, swap_trials=10,
                  clients=[1, 2, 4, 8, 16], requests_per_client=1, concurrency_trials=2, concurrency_tokens=32,
                  cycles=40, cold_trials=3,
                  cold_size="mid", warmup=2, lora_2b=False),
    "smoke": dict(sizes=["tiny"], trials=1, tokens=4, image_side=64, swap_trials=2, clients=[1, 2],
                  requests_per_client=1, concurrency_trials=1, concurrency_tokens=4, cycles=4, cold_trials=1,
                  cold_size="tiny", warmup=1, lora_2b=False),
}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the inference worker, each measured side by side with the in-process baseline "
        "(transformers + PEFT + model.generate, one request at a time) and reported as a ratio.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny + mid, few trials: a few minutes on 2 CPU cores")
    mode.add_argument("--smoke", action="store_true", help="CI smoke run: tiny only, 1 trial, a few tokens "
                      "(the numbers mean nothing)")
    p.add_argument("--size", action="append", choices=SIZES, help="built-in model size (repeatable; default: tiny "
                   "and mid). 2b is the Qwen3-VL-2B architecture with random weights (4.3 GB, built once)")
    p.add_argument("--model", type=Path, help="benchmark this checkpoint directory instead of the built-in sizes")
    p.add_argument("--figures", type=_ints, default=list(DEFAULT_FIGURES),
                   help="figures to run, comma-separated (default 1-6; 7 needs make venv-vllm; 8 starts a Ray cluster; "
                   "9: HTTP (SSE) beside WebSocket)")
    p.add_argument("--trials", type=int, help="interleaved trials per subject (figures 1, 2, 5, 9)")
    p.add_argument("--warmup", type=int, help="untimed runs of each subject before its trials")
    p.add_argument("--tokens", type=int, help="tokens generated per request (figures 1, 2, 5; 9 with 1 client)")
    p.add_argument("--image-side", type=int, help="side of the square test image in pixels")
    p.add_argument("--swap-trials", type=int, help="trials of the hot-swap measurement (figure 3)")
    p.add_argument("--clients", type=_ints, help="concurrency levels (figure 4), e.g. 1,2,4,8")
    p.add_argument("--requests-per-client", type=int, help="requests each client sends in turn (figures 4, 8, 9)")
    p.add_argument("--concurrency-trials", type=int, help="trials of figure 4")
    p.add_argument("--concurrency-tokens", type=int, help="tokens per request in figures 4, 8 and 9 (8 clients)")
    p.add_argument("--max-batch-rows", type=int, default=None,
                   help="the worker's MAX_BATCH_ROWS (default: the worker's own, 8 on CPU, 32 on CUDA)")
    p.add_argument("--cycles", type=int, help="adapter load/unload cycles (figure 6)")
    p.add_argument("--cold-trials", type=int, help="cold loads from S3 (figure 3)")
    p.add_argument("--cold-size", choices=SIZES, help="model size whose adapters the cold load uses (default: 2b; "
                   "--quick: mid)")
    p.add_argument("--lora-2b", action=argparse.BooleanOptionalAction, default=None,
                   help="also run figure 2 on the 2B architecture, 3 trials of 4 tokens (default: on in the full mode "
                   "with the built-in sizes)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank of the benchmark adapters (q,k,v,o)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bfloat16 on CUDA; on CPU float32, bfloat16 for checkpoints of 1B parameters or more")
    p.add_argument("--cache-dir", type=Path, default=None, help=f"built models and adapters (default "
                   f"{default_cache_dir()})")
    p.add_argument("--out", type=Path, help="where results.md and results.json go (default bench-results/<time>)")
    p.add_argument("--s3-endpoint", help="use this S3/MinIO server for the cold load instead of starting SeaweedFS")
    p.add_argument("--s3-access-key", default=os.environ.get("MINIO_ACCESS_KEY"))
    p.add_argument("--s3-secret-key", default=os.environ.get("MINIO_SECRET_KEY"))
    p.add_argument("--compare-ref", metavar="GIT_REF",
                   help="also run the worker of this git ref (e.g. a previous release) in figure 1, side by side: one "
                   "client's decode speed and time to first token of the new worker ÷ the old one")
    p.add_argument("--verbose", action="store_true")
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = dict(PRESETS[mode])

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return preset[name] if value is None else value

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = args.size or preset["sizes"]
    cold_size: str | None = args.cold_size or (None if args.model else preset["cold_size"])
    if args.size and not args.cold_size and mode != "full":
        cold_size = sizes[-1]
    out = args.out or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    return Options(
        sizes=[] if args.model else list(dict.fromkeys(sizes)), model_dir=args.model, figures=sorted(set(args.figures)),
        trials=pick("trials"), tokens=pick("tokens"), image_side=pick("image_side"), swap_trials=pick("swap_trials"),
        clients=pick("clients"), requests_per_client=pick("requests_per_client"),
        concurrency_trials=pick("concurrency_trials"), concurrency_tokens=pick("concurrency_tokens"),
        max_batch_rows=args.max_batch_rows, cycles=pick("cycles"), cold_trials=pick("cold_trials"),
        cold_size=cold_size, warmup=pick("warmup"),
        lora_2b=bool(args.lora_2b if args.lora_2b is not None else preset["lora_2b"] and not args.model
                     and not args.size and 2 in args.figures),
        device=device, dtype=None if args.dtype == "auto" else args.dtype,
        cache_dir=args.cache_dir or default_cache_dir(), out=out, rank=args.rank, s3_endpoint=args.s3_endpoint,
        s3_access_key=args.s3_access_key, s3_secret_key=args.s3_secret_key, mode=mode, compare_ref=args.compare_ref,
    )


def failed_row(figure: int, model: str, exc: BaseException) -> Row:
    return Row(figure, f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}", model,
               None, "")


def run(options: Options) -> tuple[list[Row], Run]:
    bench = Run(options)
    rows: list[Row] = []
    per_target = [
        (1, figure1), (2, figure2), (3, figure3_swap), (4, figure4), (5, figure5), (6, figure6), (7, figure7),
        (8, figure8), (9, figure9),
    ]
    targets: list[tuple[Path, str, str | None]] = []
    if options.model_dir is not None:
        targets.append((options.model_dir, options.model_dir.name, None))
    for name in options.sizes:
        if any(f in options.figures for f, _ in per_target):
            say(f"model {name}: building it if needed (cached in {bench.cache.root})")
            targets.append((bench.cache.model(name), name, name))
    try:
        for model_dir, label, size in targets:
            target = Target(bench, model_dir, label, size)
            try:
                for number, fn in per_target:
                    if number not in options.figures:
                        continue
                    if number in (4, 6, 8, 9):
                        # 4: a fresh worker, one that has never run two generations at once (see figure 4);
                        # 6: runs a worker of its own: free the CPU and memory first; 9: a worker with its HTTP API
                        target.stop_worker()
                    say(f"figure {number} ({FIGURES[number]}), {target.label}")
                    try:
                        rows.extend(fn(bench, target))
                    except Exception as exc:
                        traceback.print_exc()
                        rows.append(failed_row(number, target.label, exc))
            finally:
                target.close()
        if options.lora_2b and 2 in options.figures and "2b" not in options.sizes:
            say("model 2b (figure 2, 3 trials of 4 tokens): building it if needed")
            full = bench.options
            bench.options = dataclasses.replace(full, trials=3, warmup=1, tokens=4)
            target = Target(bench, bench.cache.model("2b"), "2b", "2b")
            try:
                rows.extend(figure2(bench, target))
            except Exception as exc:
                traceback.print_exc()
                rows.append(failed_row(2, target.label, exc))
            finally:
                target.close()
                bench.options = full
        if 3 in options.figures:
            cold: tuple[Path, str, str | None]
            if options.model_dir is not None and options.cold_size is None:
                cold = (options.model_dir, options.model_dir.name, None)
            else:
                cold_size = options.cold_size or "mid"
                say(f"model {cold_size} (cold load): building it if needed")
                cold = (bench.cache.model(cold_size), cold_size, cold_size)
            say(f"figure 3 (cold load), {cold[1]}")
            try:
                rows.extend(figure3_cold(bench, *cold))
            except Exception as exc:
                traceback.print_exc()
                rows.append(failed_row(3, cold[1], exc))
    finally:
        bench.close()
    rows.sort(key=lambda r: r.figure)  # stable: each figure's rows stay in the order measured
    return rows, bench


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        import warnings

        warnings.filterwarnings("ignore")
    options = options_from_args(args)
    bad = [f for f in options.figures if f not in FIGURES]
    if bad:
        print(f"unknown figures {bad} ({sorted(FIGURES)})", file=sys.stderr)
        return 2
    machine = machine_info(options.device)
    started = time.perf_counter()
    rows, bench = run(options)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["duration_s"] = round(time.perf_counter() - started, 1)
    settings = {
        "mode": options.mode,
        "models": ([str(options.model_dir)] if options.model_dir else []) + options.sizes,
        "figures": options.figures, "trials": options.trials, "warm-up runs": options.warmup,
        "tokens": options.tokens,
        "image": f"{options.image_side}×{options.image_side} PNG", "hot-swap trials": options.swap_trials,
        "clients": options.clients, "requests/client": options.requests_per_client,
        "concurrency trials": options.concurrency_trials, "concurrency tokens": options.concurrency_tokens,
        "MAX_BATCH_ROWS": options.max_batch_rows or "worker default (8 on CPU, 32 on CUDA)",
        "memory cycles": options.cycles, "previous worker (figure 1)": options.compare_ref or "no",
        "cold trials": options.cold_trials, "cold-load model": options.cold_size or str(options.model_dir),
        "figure 2 on 2b": "3 trials of 4 tokens" if options.lora_2b else "no",
        "LoRA": f"rank {options.rank} q,k,v,o", "device": options.device,
        "duration": f"{machine['duration_s']:.0f} s",
    }
    md, js = write_results(options.out, rows, machine, settings, bench.notes)
    print(render_markdown(rows, machine, settings, bench.notes))
    print(f"wrote {md} and {js}", file=sys.stderr)
    failed = [r for r in rows if r.measurement.startswith("FAILED")]
    if failed or not finite(rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
