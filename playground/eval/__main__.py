"""``python -m playground.eval``: the set evaluation without the UI, for CI (see ``--help``).

    python -m playground.eval diagrams.zip --a team-bpmn-v2 --b team-bpmn-v1 --out results/
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wire.prompts import DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT

from ..client import (
    DEFAULT_URL,
    EXIT_FAILED,  # an item failed (adapter not found, image refused…)
    EXIT_RETRY,  # the worker is down, loading or busy: try again later (resume with --resume)
    EXIT_USAGE,
    PlaygroundError,
    WorkerClient,
    exit_status,
)
from ..runs import Params
from ..settings import PlaygroundSettings
from ..store import HistoryStore, StoreError
from . import evaluation as ev
from .report import summarize, summary_lines, to_jsonl, to_markdown
from .runner import UNAVAILABLE, run_evaluation
from .sets import SetError, load_set

_EPILOG = """\
SET is an image (PNG, JPEG, WebP), a diagram source (BPMN, Mermaid, Graphviz, PlantUML, SVG: drawn as PNG), a
reference (.md/.txt with the stem of its image) or a zip of them; give several.
Progress goes to stderr; the summary to stdout; the evaluation to OUT/evaluation-ID.jsonl and .md. The evaluation is
kept in the playground's history (PLAYGROUND_HISTORY_DIR) unless --no-history, and --resume ID finishes a stopped one.
Exit status: 0 every item done, 1 an item failed, 2 bad arguments or inputs, 75 the worker is down or busy (resume).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m playground.eval", epilog=_EPILOG,
                                     description="A/B evaluation of two adapters over a set of diagrams.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", type=Path, metavar="SET", help="images, references, zips")
    parser.add_argument("--a", dest="adapter_a", metavar="ADAPTER", help="adapter A (default: the base model)")
    parser.add_argument("--b", dest="adapter_b", metavar="ADAPTER", help="adapter B (default: the base model)")
    parser.add_argument("--url", default=os.environ.get("INFERENCE_WS_URL", DEFAULT_URL),
                        help="worker URL (default: $INFERENCE_WS_URL or %(default)s)")
    parser.add_argument("--token", default=os.environ.get("INFERENCE_AUTH_TOKEN"),
                        help="auth token (default: $INFERENCE_AUTH_TOKEN)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="the instruction (default: the playground's Markdown-table prompt)")
    prompt.add_argument("--prompt-file", type=Path, help="read the instruction from a file")
    parser.add_argument("--system", help="system prompt (default: the playground's)")
    defaults = Params()
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the exports (default: .)")
    parser.add_argument("--history-dir", type=Path, help="history directory (default: $PLAYGROUND_HISTORY_DIR)")
    parser.add_argument("--no-history", action="store_true", help="do not keep the evaluation in the history")
    parser.add_argument("--resume", type=int, metavar="ID", help="finish a stopped evaluation of the history")
    return parser


async def _run_cli(args: argparse.Namespace, settings: PlaygroundSettings, err: Any) -> tuple[int, ev.Evaluation]:
    store = None if args.no_history else HistoryStore(args.history_dir or settings.history_dir)
    async with WorkerClient(args.url, token=args.token) as client:
        status = await client.status()  # fails fast (exit 75) when the worker is down
        if args.resume is not None:
            if store is None:
                raise SetError("--resume needs the history (leave out --no-history)")
            evaluation = ev.load(store, args.resume)
            if evaluation is None:
                raise SetError(f"no evaluation {args.resume} in the history at {store.path}")
            evaluation.worker = args.url
            image_of = ev.stored_image(store)
        else:
            files = []
            for path in args.inputs:
                try:
                    files.append((path.name, path.read_bytes()))
                except OSError as exc:
                    raise SetError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
            # Diagram sources are drawn here: on a thread, the connection's event loop goes on.
            loaded = await asyncio.to_thread(load_set, files, max_items=settings.eval_max_items,
                                             max_bytes=settings.eval_max_archive_bytes,
                                             image_max_bytes=status.limits.get("image_max_bytes"))
            for problem in loaded.problems:
                print(f"skipped: {problem}", file=err)
            if not loaded.items:
                raise SetError("no diagram to evaluate (give images or a zip of them)")
            prompt = args.prompt_file.read_text() if args.prompt_file else (args.prompt or DEFAULT_PROMPT)
            params = Params(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_tokens=args.max_tokens, seed=args.seed, repetition_penalty=args.repetition_penalty)
            evaluation = ev.new_evaluation(loaded.items, worker=args.url, prompt=prompt.strip(),
                                        system_prompt=(DEFAULT_SYSTEM_PROMPT if args.system is None else
                                                       args.system).strip() or None,
                                        params=params, adapter_a=args.adapter_a, adapter_b=args.adapter_b)
            data = {i.name: i.image.data for i in loaded.items}
            if store is not None:
                ev.save_new(store, evaluation, [i.image.data for i in loaded.items])

            def image_of(item: ev.EvalItem) -> bytes:
                return data[item.name]

        def on_item(item: ev.EvalItem) -> None:
            if store is not None:
                ev.save_item(store, evaluation, item)
            parts = []
            for side in ev.SIDES:
                out = item.output(side)
                assert out is not None
                detail = (f"{(out.usage or {}).get('completion_tokens', 0)} tokens" if out.status == "done"
                          else (out.error or {}).get("code", out.status))
                score = (item.scores or {}).get(side)
                parts.append(f"{side} {detail}" + (f", chrF {score['chrf']:.1f}" if score else ""))
            print(f"[{item.position + 1}/{len(evaluation.items)}] {item.name}: {'; '.join(parts)}", file=err,
                  flush=True)

        try:
            await run_evaluation(client, evaluation, image_of, on_item=on_item)
        finally:
            if store is not None and evaluation.id is not None:
                ev.save_header(store, evaluation)
    if evaluation.status != "done":
        gone = any(o.error and o.error["code"] in UNAVAILABLE | {"busy"} for i in evaluation.items
                   for o in i.outputs)
        return (EXIT_RETRY if gone else EXIT_FAILED), evaluation
    return (EXIT_FAILED if any(i.failed for i in evaluation.items) else 0), evaluation


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.resume is None and not args.inputs:
        _parser().error("give the set (images, references, zips) or --resume ID")
    try:
        settings = PlaygroundSettings()
        code, evaluation = asyncio.run(_run_cli(args, settings, sys.stderr))
    except (SetError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PlaygroundError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print("error: interrupted (resume with --resume ID)", file=sys.stderr)
        return 130
    summary = summarize(evaluation)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"evaluation-{evaluation.id if evaluation.id is not None else 'local'}"
    Path(f"{stem}.jsonl").write_text(to_jsonl(evaluation, summary))
    Path(f"{stem}.md").write_text(to_markdown(evaluation, summary))
    print("\n".join(summary_lines(evaluation, summary)))
    print(f"wrote {stem}.jsonl and {stem}.md", file=sys.stderr)
    if evaluation.note:
        print(f"note: {evaluation.note}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
