"""The session history of runs and its exports (JSON, Markdown). Pure.

Every run is recorded, whatever happened to it: finished, stopped, refused or failed (with the error). A run has one
output (single mode) or two (A/B), each with its adapter, text, status, usage and timings as the worker reported them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .diff import Divergence, describe_divergence

Status = Literal["pending", "loading", "streaming", "done", "stopped", "error"]
FINISHED: tuple[Status, ...] = ("done", "stopped", "error")
# A person's judgement of an A/B pair.
VERDICTS = {"a": "A better", "b": "B better", "tie": "tie", "both_wrong": "both wrong"}
EXPORT_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Output:
    """One stream of a run. Updated in place while it streams; final once ``status`` is done, stopped or error."""

    label: str  # "A", "B", or "output" in single mode
    adapter: str | None  # None: the base model
    text: str = ""
    status: Status = "pending"
    finish_reason: str | None = None  # stop, length, cancelled (from done)
    usage: dict[str, int] | None = None  # prompt_tokens, completion_tokens, max_tokens
    timings: dict[str, float | None] | None = None  # queue_ms, ttft_ms, total_ms, tokens_per_s
    seed: int | None = None  # the seed the worker used (when sampling)
    error: dict[str, Any] | None = None  # code, message, retryable
    adapter_load: dict[str, Any] | None = None  # cached, load_ms, digest, rank (when an adapter was loaded)
    elapsed_ms: float | None = None  # measured by the playground: request sent → stream ended

    @property
    def adapter_label(self) -> str:
        return self.adapter or "base model"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def has_text(self) -> bool:
        """Done, or stopped after producing something: text worth comparing."""
        return self.status == "done" or (self.status == "stopped" and bool(self.text))


@dataclass
class RunRecord:
    id: int
    mode: Literal["single", "ab"]
    worker: str
    settings: dict[str, Any]  # prompt, system_prompt, temperature, top_k, top_p, max_tokens, seed, repetition_penalty
    outputs: list[Output]
    # name, mime, bytes, width, height, sha256, thumbnail (data URL); source (name, kind, sha256, renderer…) when the
    # picture was drawn from a diagram source
    image: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None  # diff.compare() of A and B, when both produced text
    started_at: str = field(default_factory=now_iso)
    verdict: str | None = None  # A/B: a person's judgement, one of VERDICTS

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """The record :meth:`to_dict` wrote (the derived ``status`` is dropped)."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["outputs"] = [Output(**o) for o in data.get("outputs", [])]
        return cls(**fields)

    @property
    def status(self) -> str:
        """``done`` when every output is done; else the first of error, stopped, or what is still going on."""
        statuses = [o.status for o in self.outputs]
        for status in ("error", "stopped", "streaming", "loading", "pending"):
            if status in statuses:
                return status
        return "done"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def first_token_ms(timings: dict[str, float | None] | None) -> float | None:
    """The time the request itself took to its first token: the worker's ``ttft_ms`` less its queueing."""
    if not timings or timings.get("ttft_ms") is None:
        return None
    return round(float(timings["ttft_ms"] or 0.0) - float(timings.get("queue_ms") or 0.0), 2)


def next_id(records: list[RunRecord]) -> int:
    return max((r.id for r in records), default=0) + 1


# --------------------------------------------------------------------------------------------------------------------
# Chart data


def chart_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per output that has timings: run, its mode, lane, adapter, queueing, time to first token (the worker's,
    and after the queue), tokens/s."""
    rows = []
    for record in records:
        for out in record.outputs:
            if out.timings is None or out.timings.get("ttft_ms") is None:
                continue
            rows.append({"run": record.id, "mode": record.mode, "lane": out.label, "adapter": out.adapter_label,
                         "queue_ms": out.timings.get("queue_ms"), "ttft_ms": out.timings["ttft_ms"],
                         "first_token_ms": first_token_ms(out.timings),
                         "tokens_per_s": out.timings.get("tokens_per_s")})
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Exports


def to_json(records: list[RunRecord], worker: str | None = None, exported_at: str | None = None) -> str:
    """The whole history as one JSON document (``version``, ``exported_at``, ``worker``, ``runs``)."""
    document = {"version": EXPORT_VERSION, "exported_at": exported_at or now_iso(), "worker": worker,
                "runs": [r.to_dict() for r in records]}
    return json.dumps(document, ensure_ascii=False, indent=2)


def to_markdown(records: list[RunRecord], worker: str | None = None, exported_at: str | None = None) -> str:
    """The history as a Markdown report: per run its image, settings, outputs with timings and the comparison."""
    lines = ["# Playground history", "",
             f"Exported {exported_at or now_iso()}" + (f" from `{worker}`" if worker else "")
             + f" · {len(records)} run{'s' if len(records) != 1 else ''}", ""]
    for record in records:
        lines += _run_markdown(record)
    return "\n".join(lines).rstrip() + "\n"


SETTING_NAMES = ["temperature", "top_k", "top_p", "max_tokens", "seed", "repetition_penalty"]


def _run_markdown(r: RunRecord) -> list[str]:
    mode = "A/B comparison" if r.mode == "ab" else "single"
    lines = [f"## Run {r.id} · {mode} · {r.status}", "", f"Started {r.started_at}.", ""]
    if r.image:
        image = r.image
        if image.get("thumbnail"):
            lines += [f"![{_cell(image['name'])}]({image['thumbnail']})", ""]
        dims = f"{image['width']}×{image['height']} px, " if image.get("width") else ""
        lines += [f"Image: `{image['name']}` ({image.get('mime') or 'unknown format'}, {dims}{image['bytes']} bytes, "
                  f"sha256 `{image['sha256'][:16]}…`)", ""]
        if image.get("source"):
            source = image["source"]
            lines += [f"Drawn from the {source['label']} source `{source['name']}` ({source['bytes']} bytes, sha256 "
                      f"`{source['sha256'][:16]}…`) by {source['renderer']}.", ""]
    else:
        lines += ["No image.", ""]
    settings = r.settings
    lines += ["| " + " | ".join(SETTING_NAMES) + " |", "|" + "---|" * len(SETTING_NAMES),
              "| " + " | ".join(_cell(settings.get(k)) for k in SETTING_NAMES) + " |", ""]
    if settings.get("system_prompt"):
        lines += ["System prompt:", "", *_quote(settings["system_prompt"]), ""]
    lines += ["Prompt:", "", *_quote(settings.get("prompt", "")), ""]
    lines += ["| output | adapter | status | finish | TTFT ms | tokens/s | tokens | total ms |",
              "|---|---|---|---|---|---|---|---|"]
    for o in r.outputs:
        t = o.timings or {}
        lines.append("| " + " | ".join(_cell(v) for v in (
            o.label, o.adapter_label, o.status, o.finish_reason, t.get("ttft_ms"), t.get("tokens_per_s"),
            (o.usage or {}).get("completion_tokens"), t.get("total_ms"))) + " |")
    lines.append("")
    for o in r.outputs:
        lines += [f"### {o.label} · {o.adapter_label}", ""]
        if o.error:
            lines += [f"Error `{o.error['code']}`"
                      + (" (retryable)" if o.error.get("retryable") else "") + f": {o.error['message']}", ""]
        if o.text or not o.error:
            fence = "`" * max(3, longest_backtick_run(o.text) + 1)
            lines += [fence + "text", o.text, fence, ""]
    if r.comparison:
        c = r.comparison
        a, b = r.outputs[0].label, r.outputs[1].label
        lines += ["### Comparison", "", describe_divergence(Divergence(**c["divergence"]), a, b)
                  + f" Word similarity {c['similarity']:.2f}; {c['words']['a']} vs {c['words']['b']} words.", ""]
        if not c["identical"]:
            d = c["divergence"]
            lines += [f"- shared before: {code_span(d['before'])}", f"- {a} continues: {code_span(d['a_next'])}",
                      f"- {b} continues: {code_span(d['b_next'])}", ""]
            lines += ["Word-level changes (A → B):", ""]
            shown = c["changes"][:50]
            lines += [f"- {ch['op']}: {code_span(ch['a'])} → {code_span(ch['b'])}" for ch in shown]
            if len(c["changes"]) > len(shown):
                lines.append(f"- … {len(c['changes']) - len(shown)} more")
            lines.append("")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _quote(text: str) -> list[str]:
    return [f"> {line}" if line else ">" for line in text.splitlines() or [""]]


def code_span(text: str) -> str:
    """An inline code span that shows ``text`` exactly (backticks included); ``(nothing)`` for an empty text."""
    if not text:
        return "(nothing)"
    text = text.replace("\n", " ")
    ticks = "`" * (longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def longest_backtick_run(text: str) -> int:
    return max((len(m) for m in re.findall(r"`+", text)), default=0)
