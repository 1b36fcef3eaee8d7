"""The report of an evaluation: its summary (scores with the A − B interval, verdicts, latencies), the items table,
and the exports (:func:`to_jsonl`, :func:`to_markdown`, the CLI's :func:`summary_lines`)."""

from __future__ import annotations

import json
import statistics
from typing import Any

from ..diff import Divergence, describe_divergence
from ..history import VERDICTS, Output, code_span, first_token_ms, longest_backtick_run
from ..scoring import mean, paired_bootstrap
from .evaluation import SIDES, EvalItem, Evaluation, side_label


def _latency(outputs: list[Output]) -> dict[str, float | None]:
    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 2) if values else None

    timings = [o.timings for o in outputs if o.status == "done" and o.timings]
    return {"queue_ms": median([float(t["queue_ms"] or 0.0) for t in timings]),
            "first_token_ms": median([v for t in timings if (v := first_token_ms(t)) is not None]),
            "tokens_per_s": median([float(v) for t in timings if (v := t.get("tokens_per_s")) is not None])}


def summarize(evaluation: Evaluation, *, resamples: int = 2000) -> dict[str, Any]:
    """Scores over the items that have them (means, and the bootstrap interval of A − B), verdicts, latencies."""
    items = evaluation.items
    scored = [i for i in items if i.scores]
    chrf_a = [i.scores["A"]["chrf"] for i in scored if i.scores]
    chrf_b = [i.scores["B"]["chrf"] for i in scored if i.scores]
    with_rows = [i.scores for i in scored if i.scores and i.scores["A"]["rows"] and i.scores["B"]["rows"]]

    def rows_mean(side: str, key: str) -> float | None:
        return rounded(mean([s[side]["rows"][key] for s in with_rows]))

    def interval(a: list[float], b: list[float]) -> dict[str, Any] | None:
        found = paired_bootstrap(a, b, resamples=resamples)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in found.to_dict().items()} if found else None

    ran = [i for i in items if len(i.outputs) == 2]
    verdicts = {key: sum(1 for i in items if i.verdict == key) for key in VERDICTS}
    pairs = list(zip(chrf_a, chrf_b))
    chrf_wins = {"A": sum(1 for x, y in pairs if x > y), "tie": sum(1 for x, y in pairs if x == y),
                 "B": sum(1 for x, y in pairs if x < y)}

    def rounded(value: float | None) -> float | None:
        return round(value, 4) if value is not None else None

    return {
        "items": len(items), "done": evaluation.items_done, "failed": sum(1 for i in items if i.failed),
        "with_reference": sum(1 for i in items if i.reference is not None), "scored": len(scored),
        "chrf": {"A": rounded(mean(chrf_a)), "B": rounded(mean(chrf_b)),
                 "a_minus_b": interval(chrf_a, chrf_b), "wins": chrf_wins},
        "rows": {"items": len(with_rows),
                 **{side: {k: rows_mean(side, k) for k in ("precision", "recall", "f1")} for side in SIDES},
                 "f1_a_minus_b": interval([s["A"]["rows"]["f1"] for s in with_rows],
                                          [s["B"]["rows"]["f1"] for s in with_rows])},
        "verdicts": {**verdicts, "unjudged": sum(1 for i in ran if i.verdict is None)},
        "latency": {side: _latency([o for i in ran if (o := i.output(side)) is not None]) for side in SIDES},
    }


def item_row(item: EvalItem) -> dict[str, Any]:
    """One line of the items table (UI and Markdown)."""
    row: dict[str, Any] = {"#": item.position + 1, "item": item.name}
    for side in SIDES:
        out = item.output(side)
        scores = (item.scores or {}).get(side) or {}
        row[f"chrF {side}"] = scores.get("chrf")
        row[f"rows F1 {side}"] = round(scores["rows"]["f1"], 4) if scores.get("rows") else None
        t = out.timings if out is not None else None
        row[f"first token {side} (ms)"] = first_token_ms(t)
        row[f"tokens/s {side}"] = t.get("tokens_per_s") if t else None
        row[f"status {side}"] = (out.finish_reason or out.status) if out is not None and out.status == "done" \
            else ((out.error or {}).get("code") or out.status if out is not None else "not run")
    row["verdict"] = VERDICTS.get(item.verdict or "", "")
    return row


def to_jsonl(evaluation: Evaluation, summary: dict[str, Any] | None = None) -> str:
    """One JSON object per line: the evaluation (setup, adapters' digests, summary), then one per item."""
    header = {"type": "evaluation", **evaluation.header(), "summary": summary or summarize(evaluation)}
    lines = [json.dumps(header, ensure_ascii=False)]
    for item in evaluation.items:
        record = item.to_dict()
        record["image"] = {k: v for k, v in record["image"].items() if k != "thumbnail"}
        lines.append(json.dumps({"type": "item", **record}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _interval(found: dict[str, Any] | None, digits: int = 1, scale: float = 1.0) -> str:
    if not found:
        return "–"
    return (f"{found['mean'] * scale:+.{digits}f} ({found['low'] * scale:+.{digits}f} … "
            f"{found['high'] * scale:+.{digits}f})")


def _fenced(text: str) -> list[str]:
    fence = "`" * max(3, longest_backtick_run(text) + 1)
    return [fence + "text", text, fence]


def to_markdown(evaluation: Evaluation, summary: dict[str, Any] | None = None) -> str:
    """A report: setup, scores with the A − B interval, verdicts, latencies, the items table, then every output."""
    s = summary or summarize(evaluation)
    h = evaluation.header()
    title = f"# A/B evaluation{f' {evaluation.id}' if evaluation.id else ''}: {evaluation.label}"
    lines = [title, "", f"Worker `{evaluation.worker}` · created {evaluation.created_at} · {evaluation.status}"
             + f" · {s['done']} of {s['items']} items done, {s['with_reference']} with a reference", ""]
    if evaluation.note:
        lines += [f"Note: {evaluation.note}.", ""]
    lines += ["## Setup", "", "| side | adapter | digest |", "|---|---|---|"]
    lines += [f"| {side} | {h['adapters'][side]['label']} | {_num(h['adapters'][side]['digest'])} |" for side in SIDES]
    names = list(h["params"])
    lines += ["", "| " + " | ".join(names) + " |", "|" + "---|" * len(names),
              "| " + " | ".join(str(h["params"][k]) for k in names) + " |", ""]
    if evaluation.system_prompt:
        lines += ["System prompt:", "", *(f"> {line}" for line in evaluation.system_prompt.splitlines()), ""]
    lines += ["Prompt:", "", *(f"> {line}" for line in evaluation.prompt.splitlines()), ""]
    lines += ["## Scores", ""]
    if s["scored"]:
        chrf_s, rows_s = s["chrf"], s["rows"]
        lines += [f"Over the {s['scored']} items with a reference and both outputs done; A − B with its 95 % "
                  f"bootstrap interval.", "",
                  "| score | A | B | A − B (95 % interval) |", "|---|---|---|---|",
                  f"| chrF | {_num(chrf_s['A'])} | {_num(chrf_s['B'])} | {_interval(chrf_s['a_minus_b'])} |"]
        if rows_s["items"]:
            for key in ("precision", "recall", "f1"):
                extra = _interval(rows_s["f1_a_minus_b"], 3) if key == "f1" else ""
                lines.append(f"| rows {key} | {_num(rows_s['A'][key], 3)} | {_num(rows_s['B'][key], 3)} | {extra} |")
        wins = chrf_s["wins"]
        lines += ["", f"chrF per item: A higher {wins['A']}, tie {wins['tie']}, B higher {wins['B']}.", ""]
    else:
        lines += ["No item has both a reference and two finished outputs: nothing to score.", ""]
    v = s["verdicts"]
    lines += ["## Verdicts", "", " · ".join(f"{VERDICTS[k]} {v[k]}" for k in VERDICTS) + f" · not judged "
              f"{v['unjudged']}", "", "## Latency (medians)", "",
              "| side | queued ms | to first token after the queue, ms | tokens/s |", "|---|---|---|---|"]
    for side in SIDES:
        lat = s["latency"][side]
        lines.append(f"| {side} | {_num(lat['queue_ms'])} | {_num(lat['first_token_ms'])} | "
                     f"{_num(lat['tokens_per_s'])} |")
    lines += ["", "## Items", "", "| # | item | image sha256 | chrF A | chrF B | rows F1 A | rows F1 B | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for item in evaluation.items:
        row = item_row(item)
        lines.append(f"| {row['#']} | {item.name.replace('|', '/')} | `{item.image['sha256'][:12]}` | "
                     f"{_num(row['chrF A'])} | {_num(row['chrF B'])} | {_num(row['rows F1 A'], 3)} | "
                     f"{_num(row['rows F1 B'], 3)} | {row['verdict'] or '–'} |")
    lines.append("")
    for item in evaluation.items:
        lines += [f"### {item.position + 1}. {item.name}", ""]
        if item.verdict:
            lines += [f"Verdict: {VERDICTS[item.verdict]}.", ""]
        if item.comparison:
            lines += [describe_divergence(Divergence(**item.comparison["divergence"])) + " Diverges: A "
                      + code_span(item.comparison["divergence"]["a_next"]) + ", B "
                      + code_span(item.comparison["divergence"]["b_next"]) + ".", ""]
        for side in SIDES:
            out = item.output(side)
            lines += [f"**{side} · {side_label(evaluation.adapters[side])}**"
                      + (f" ({out.status}{', ' + out.finish_reason if out.finish_reason else ''})" if out else
                         " (not run)"), ""]
            if out is not None and out.error:
                lines += [f"Error `{out.error['code']}`: {out.error['message']}", ""]
            if out is not None and out.text:
                lines += [*_fenced(out.text), ""]
        if item.reference is not None:
            lines += [f"**Reference** ({item.reference_name})", "", *_fenced(item.reference), ""]
    return "\n".join(lines).rstrip() + "\n"


def summary_lines(evaluation: Evaluation, summary: dict[str, Any]) -> list[str]:
    """A few lines for a terminal."""
    lines = [f"evaluation {evaluation.id or '-'}: {evaluation.label}: {summary['done']} of {summary['items']} items "
             f"done, {summary['failed']} failed, {summary['scored']} scored"]
    if summary["scored"]:
        c = summary["chrf"]
        lines.append(f"chrF A {_num(c['A'])} B {_num(c['B'])} A-B {_interval(c['a_minus_b'])}")
        r = summary["rows"]
        if r["items"]:
            lines.append(f"rows F1 A {_num(r['A']['f1'], 3)} B {_num(r['B']['f1'], 3)} "
                         f"A-B {_interval(r['f1_a_minus_b'], 3)}")
    return lines
