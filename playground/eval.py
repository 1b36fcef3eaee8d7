"""A/B evaluation over a set of diagrams: inputs, the run (resumable), scores, verdicts, exports, and a CLI.

    python -m playground.eval diagrams.zip --a team-bpmn-v2 --b team-bpmn-v1 --out results/

A set is images (PNG, JPEG, WebP) or diagram sources (BPMN, Mermaid, Graphviz, PlantUML, SVG: drawn as PNG by
:mod:`diagrams` when the set is loaded), loose or in a zip, each optionally with a reference description: a ``.md``
or ``.txt`` file with the same stem (``order.png`` + ``order.md``; in a zip, in the same folder). Every item runs with
adapter A and adapter B (``None``: the base model) on the same prompt, system prompt, parameters and seed; both
requests of an item go out together on one connection, so the worker runs them in the same batch.

After each item its outputs, scores (:mod:`playground.scoring`, when it has a reference) and the comparison are
saved (:mod:`playground.store`), so an evaluation that was stopped — Stop, a closed page, a worker that went away —
resumes with the items it has not finished. A person's verdict per item (A better, B better, tie, both wrong) is
saved beside them. :func:`to_jsonl` and :func:`to_markdown` export the whole evaluation.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import statistics
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from diagrams import SUFFIXES as DIAGRAM_SUFFIXES
from diagrams import describe_kinds

from .client import (
    DEFAULT_URL,
    EXIT_FAILED,  # an item failed (adapter not found, image refused…)
    EXIT_RETRY,  # the worker is down, loading or busy: try again later (resume with --resume)
    EXIT_USAGE,
    PlaygroundError,
    WorkerClient,
    exit_status,
    user_message,
)
from .diff import Divergence, compare, describe_divergence
from .history import VERDICTS, Output, code_span, first_token_ms, longest_backtick_run, now_iso
from .images import ImageInput, UploadError, human_bytes, load_upload
from .runs import DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT, Event, Params, run_outputs
from .scoring import chrf, mean, paired_bootstrap, row_scores
from .settings import PlaygroundSettings
from .store import HistoryStore, StoreError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", *DIAGRAM_SUFFIXES)  # pictures, and sources drawn as pictures
REFERENCE_SUFFIXES = (".md", ".txt")
REFERENCE_MAX_BYTES = 1024 * 1024
# Errors that say the worker itself is gone: the evaluation stops there instead of failing every remaining item.
UNAVAILABLE = {"unreachable", "timeout", "disconnected", "shutting_down", "loading", "unauthorized", "bad_url",
               "handshake_failed"}
SIDES = ("A", "B")
NOT_A_DIAGRAM = f"PNG, JPEG, WebP, or a source: {describe_kinds()}"


class SetError(Exception):
    """The set as a whole cannot be used (not a zip, too many items, too large)."""


# --------------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class SetItem:
    """A diagram of the set, and its reference description if it has one."""

    name: str
    image: ImageInput
    reference: str | None = None
    reference_name: str | None = None


@dataclass
class LoadedSet:
    items: list[SetItem]
    problems: list[str]  # files that were left out, and why

    @property
    def with_reference(self) -> int:
        return sum(1 for i in self.items if i.reference is not None)


def _stem(name: str) -> str:
    path = PurePosixPath(name)
    return str(path.with_suffix("")).casefold()


def _files_of(name: str, data: bytes, max_bytes: int, problems: list[str]) -> list[tuple[str, bytes]]:
    """A zip's members (bounded before anything is read), or the file itself."""
    if not name.casefold().endswith(".zip"):
        return [(name, data)]
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise SetError(f"{name} is not a zip archive") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise SetError(f"{name} holds {human_bytes(total)}, more than the limit of {human_bytes(max_bytes)} "
                           f"(PLAYGROUND_EVAL_MAX_ARCHIVE_BYTES)")
        out = []
        for member in members:
            parts = PurePosixPath(member.filename).parts
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue  # macOS resource forks, hidden files
            if not member.filename.casefold().endswith(IMAGE_SUFFIXES + REFERENCE_SUFFIXES):
                problems.append(f"{member.filename}: not a diagram ({NOT_A_DIAGRAM}) or a reference (.md, .txt)")
                continue
            with archive.open(member) as f:
                content = f.read(member.file_size + 1)
            if len(content) != member.file_size:  # a header that lies about the size (a zip bomb)
                raise SetError(f"{name}: {member.filename} is not the size its header says")
            out.append((member.filename, content))
        return out


def load_set(files: Sequence[tuple[str, bytes]], *, max_items: int = 200, max_bytes: int = 256 * 1024 * 1024,
             image_max_bytes: int | None = None,
             load: Callable[[str, bytes], ImageInput] = load_upload) -> LoadedSet:
    """Read uploaded files (images, diagram sources, references, zips of them) into the items of a set, by name.

    A reference pairs with the image of the same stem. ``load`` reads a picture or draws a source (it blocks: call
    this on a thread from an event loop). Files that cannot be used are left out with a reason in ``problems``; a set
    that cannot be used at all raises :class:`SetError`.
    """
    problems: list[str] = []
    total = sum(len(data) for _, data in files)
    if total > max_bytes:
        raise SetError(f"the files hold {human_bytes(total)}, more than the limit of {human_bytes(max_bytes)} "
                       f"(PLAYGROUND_EVAL_MAX_ARCHIVE_BYTES)")
    images: dict[str, tuple[str, bytes]] = {}
    references: dict[str, tuple[str, bytes]] = {}
    for name, data in files:
        for member, content in _files_of(name, data, max_bytes, problems):
            folded = member.casefold()
            if not folded.endswith(IMAGE_SUFFIXES + REFERENCE_SUFFIXES):
                problems.append(f"{member}: not a diagram ({NOT_A_DIAGRAM}), a reference (.md, .txt) or a zip")
                continue
            target = images if folded.endswith(IMAGE_SUFFIXES) else references
            if _stem(member) in target:
                problems.append(f"{member}: another file has the same name; left out")
                continue
            target[_stem(member)] = (member, content)
    if len(images) > max_items:
        raise SetError(f"the set has {len(images)} diagrams; at most {max_items} (PLAYGROUND_EVAL_MAX_ITEMS)")
    items = []
    for stem, (name, data) in sorted(images.items(), key=lambda kv: kv[1][0]):
        try:
            image = load(name, data)
        except UploadError as exc:
            problems.append(f"{exc}; left out")
            continue
        if image.mime is None:
            problems.append(f"{name}: not a PNG, JPEG or WebP image; left out")
            continue
        if image_max_bytes is not None and image.size > image_max_bytes:
            problems.append(f"{name}: {human_bytes(image.size)}, over the worker's limit of "
                            f"{human_bytes(image_max_bytes)}; left out")
            continue
        reference = reference_name = None
        if stem in references:
            reference_name, raw = references.pop(stem)
            if len(raw) > REFERENCE_MAX_BYTES:
                problems.append(f"{reference_name}: over {human_bytes(REFERENCE_MAX_BYTES)}; scored without it")
            else:
                reference = raw.decode("utf-8", errors="replace")
        items.append(SetItem(name, image, reference, reference_name if reference is not None else None))
    for name, _ in references.values():
        problems.append(f"{name}: a reference without a diagram of the same name")
    return LoadedSet(items, problems)


# --------------------------------------------------------------------------------------------------------------------
# The evaluation


def side_label(adapter: str | None) -> str:
    return adapter or "base model"


@dataclass
class EvalItem:
    """One diagram of an evaluation: its input digests, then A's and B's outputs, scores and verdict."""

    position: int  # 0-based
    name: str
    image: dict[str, Any]  # name, mime, bytes, width, height, sha256, thumbnail
    reference: str | None = None
    reference_name: str | None = None
    reference_sha256: str | None = None
    outputs: list[Output] = field(default_factory=list)  # A, B (empty until it ran)
    scores: dict[str, Any] | None = None  # {"A": {"chrf", "rows"}, "B": …} when it has a reference
    comparison: dict[str, Any] | None = None  # diff.compare(A, B) when both have text
    verdict: str | None = None  # a key of VERDICTS

    @property
    def needs_run(self) -> bool:
        """Not run yet, stopped, or failed in a way that may work later (busy, worker down)."""
        if len(self.outputs) != 2:
            return True
        return any(o.status not in ("done", "error") or (o.status == "error" and (o.error or {}).get("retryable"))
                   for o in self.outputs)

    @property
    def failed(self) -> bool:
        return any(o.status == "error" for o in self.outputs)

    def output(self, side: str) -> Output | None:
        return self.outputs[SIDES.index(side)] if len(self.outputs) == 2 else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalItem:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["outputs"] = [Output(**o) for o in data.get("outputs", [])]
        return cls(**fields)


@dataclass
class Evaluation:
    worker: str
    prompt: str
    system_prompt: str | None
    params: Params
    adapters: dict[str, str | None]  # "A", "B" → adapter name (None: the base model)
    items: list[EvalItem]
    id: int | None = None
    created_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    status: str = "new"  # new, running, interrupted (stopped, or the worker went away), done
    digests: dict[str, str | None] = field(default_factory=lambda: {"A": None, "B": None})
    note: str | None = None  # why it stopped, when it did

    @property
    def items_done(self) -> int:
        return sum(1 for i in self.items if not i.needs_run)

    @property
    def label(self) -> str:
        return f"{side_label(self.adapters['A'])} vs {side_label(self.adapters['B'])}"

    def header(self) -> dict[str, Any]:
        """Everything but the items (what the store keeps in the evaluation's row)."""
        return {
            "id": self.id, "created_at": self.created_at, "finished_at": self.finished_at, "status": self.status,
            "note": self.note, "worker": self.worker, "prompt": self.prompt, "system_prompt": self.system_prompt,
            "params": self.params.request_fields(),
            "adapters": {s: {"name": self.adapters[s], "label": side_label(self.adapters[s]),
                             "digest": self.digests.get(s)} for s in SIDES},
            "items_total": len(self.items), "items_done": self.items_done,
        }

    @classmethod
    def from_parts(cls, header: dict[str, Any], items: list[dict[str, Any]]) -> Evaluation:
        return cls(worker=header["worker"], prompt=header["prompt"], system_prompt=header.get("system_prompt"),
                   params=Params(**header["params"]), adapters={s: header["adapters"][s]["name"] for s in SIDES},
                   digests={s: header["adapters"][s].get("digest") for s in SIDES},
                   items=[EvalItem.from_dict(i) for i in items], id=header.get("id"),
                   created_at=header["created_at"], finished_at=header.get("finished_at"),
                   status=header.get("status", "interrupted"), note=header.get("note"))


def new_evaluation(items: Sequence[SetItem], *, worker: str, prompt: str, system_prompt: str | None, params: Params,
                   adapter_a: str | None, adapter_b: str | None) -> Evaluation:
    evaluation_items = []
    for position, item in enumerate(items):
        image = item.image
        evaluation_items.append(EvalItem(
            position=position, name=item.name, reference=item.reference, reference_name=item.reference_name,
            reference_sha256=hashlib.sha256(item.reference.encode()).hexdigest() if item.reference is not None
            else None,
            image=image.record()))
    return Evaluation(worker=worker, prompt=prompt, system_prompt=system_prompt, params=params,
                      adapters={"A": adapter_a, "B": adapter_b}, items=evaluation_items)


def score_item(item: EvalItem) -> None:
    """The comparison of A and B, and each side's scores against the reference (when there is one)."""
    item.comparison = item.scores = None
    if len(item.outputs) != 2:
        return
    a, b = item.outputs
    if a.has_text and b.has_text:
        item.comparison = compare(a.text, b.text)
    if item.reference is None:
        return
    scores: dict[str, Any] = {}
    for side, out in zip(SIDES, (a, b)):
        if out.status != "done":
            return
        rows = row_scores(out.text, item.reference)
        scores[side] = {"chrf": round(chrf(out.text, item.reference), 4),
                        "rows": rows.to_dict() if rows is not None else None}
    item.scores = scores


async def run_evaluation(
    client: WorkerClient,
    evaluation: Evaluation,
    image_of: Callable[[EvalItem], bytes],
    *,
    on_events: Callable[[EvalItem, list[Event]], object] = lambda item, events: None,
    on_item: Callable[[EvalItem], object] = lambda item: None,
    stop_grace_s: float = 3.0,
) -> None:
    """Run every item that needs it, in order: A and B of an item at the same time, on one connection.

    ``on_item`` is called after each item (also one that was interrupted) to save it; ``on_events`` streams the
    current item's events (an exception raised there — Streamlit's Stop — stops the evaluation like a cancel).
    """
    evaluation.status, evaluation.note = "running", None
    interrupted = True
    try:
        for item in evaluation.items:
            if not item.needs_run:
                continue
            item.outputs = [Output(side, evaluation.adapters[side]) for side in SIDES]
            item.scores = item.comparison = None
            messages = [user_message(evaluation.prompt, image=image_of(item))]
            try:
                await run_outputs(client, item.outputs, messages, evaluation.params,
                                  system_prompt=evaluation.system_prompt, stop_grace_s=stop_grace_s,
                                  on_events=lambda events, item=item: on_events(item, events))  # type: ignore[misc]
            finally:
                score_item(item)
                for side, out in zip(SIDES, item.outputs):
                    if out.adapter_load and out.adapter_load.get("digest"):
                        evaluation.digests[side] = out.adapter_load["digest"]
                on_item(item)
            gone = next((o.error for o in item.outputs if o.error and o.error["code"] in UNAVAILABLE), None)
            if gone is not None:
                evaluation.note = f"stopped at item {item.position + 1}: {gone['code']}: {gone['message']}"
                return
        interrupted = False
    finally:
        if interrupted:
            evaluation.status = "interrupted"
            evaluation.note = evaluation.note or "stopped before every item ran"
        else:
            evaluation.status = "done" if evaluation.items_done == len(evaluation.items) else "interrupted"
            evaluation.finished_at = now_iso()
            if evaluation.status == "interrupted":
                evaluation.note = "some items failed in a way that may work later (resume them)"


# --------------------------------------------------------------------------------------------------------------------
# Persistence


def save_new(store: HistoryStore, evaluation: Evaluation, images: Sequence[bytes]) -> int:
    evaluation.id = store.add_evaluation(evaluation.header(), [(i.to_dict(), data)
                                                              for i, data in zip(evaluation.items, images)])
    return evaluation.id


def save_item(store: HistoryStore, evaluation: Evaluation, item: EvalItem) -> None:
    assert evaluation.id is not None
    store.update_eval_item(evaluation.id, item.to_dict())
    store.update_evaluation(evaluation.header(), now_iso())


def save_header(store: HistoryStore, evaluation: Evaluation) -> None:
    store.update_evaluation(evaluation.header(), now_iso())


def load(store: HistoryStore, eval_id: int) -> Evaluation | None:
    parts = store.evaluation(eval_id)
    return Evaluation.from_parts(*parts) if parts is not None else None


def stored_image(store: HistoryStore) -> Callable[[EvalItem], bytes]:
    def image_of(item: EvalItem) -> bytes:
        data = store.image(item.image["sha256"])
        if data is None:
            raise StoreError(f"the image of item {item.position + 1} ({item.name}) is missing from the history")
        return data

    return image_of


# --------------------------------------------------------------------------------------------------------------------
# Summary and exports


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


# --------------------------------------------------------------------------------------------------------------------
# Command line


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


async def _run_cli(args: argparse.Namespace, settings: PlaygroundSettings, err: Any) -> tuple[int, Evaluation]:
    store = None if args.no_history else HistoryStore(args.history_dir or settings.history_dir)
    async with WorkerClient(args.url, token=args.token) as client:
        status = await client.status()  # fails fast (exit 75) when the worker is down
        if args.resume is not None:
            if store is None:
                raise SetError("--resume needs the history (leave out --no-history)")
            evaluation = load(store, args.resume)
            if evaluation is None:
                raise SetError(f"no evaluation {args.resume} in the history at {store.path}")
            evaluation.worker = args.url
            image_of = stored_image(store)
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
            evaluation = new_evaluation(loaded.items, worker=args.url, prompt=prompt.strip(),
                                        system_prompt=(DEFAULT_SYSTEM_PROMPT if args.system is None else
                                                       args.system).strip() or None,
                                        params=params, adapter_a=args.adapter_a, adapter_b=args.adapter_b)
            data = {i.name: i.image.data for i in loaded.items}
            if store is not None:
                save_new(store, evaluation, [i.image.data for i in loaded.items])

            def image_of(item: EvalItem) -> bytes:
                return data[item.name]

        def on_item(item: EvalItem) -> None:
            if store is not None:
                save_item(store, evaluation, item)
            parts = []
            for side in SIDES:
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
                save_header(store, evaluation)
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
