"""An evaluation: its items, A's and B's outputs, scores and verdicts, and how it is kept in the history.

Every item runs with adapter A and adapter B (``None``: the base model) on the same prompt, system prompt, parameters
and seed. After each item its outputs, scores (:mod:`playground.scoring`, when it has a reference) and the comparison
are saved (:mod:`playground.store`), so an evaluation that was stopped resumes with the items it has not finished. A
person's verdict per item (A better, B better, tie, both wrong) is saved beside them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..diff import compare
from ..history import Output, now_iso
from ..runs import Params
from ..scoring import chrf, row_scores
from ..store import HistoryStore, StoreError
from .sets import SetItem

SIDES = ("A", "B")


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
