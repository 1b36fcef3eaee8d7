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

The parts: :mod:`.sets` (reading and checking a set), :mod:`.evaluation` (an evaluation, its items and scores, kept
in the history), :mod:`.runner` (running the items against the worker), :mod:`.report` (the summary and the exports)
and :mod:`.__main__`, the command line. This module gathers their public names.
"""

from __future__ import annotations

from .evaluation import (
    SIDES,
    EvalItem,
    Evaluation,
    load,
    new_evaluation,
    save_header,
    save_item,
    save_new,
    score_item,
    side_label,
    stored_image,
)
from .report import item_row, summarize, summary_lines, to_jsonl, to_markdown
from .runner import UNAVAILABLE, run_evaluation
from .sets import (
    IMAGE_SUFFIXES,
    NOT_A_DIAGRAM,
    REFERENCE_MAX_BYTES,
    REFERENCE_SUFFIXES,
    LoadedSet,
    SetError,
    SetItem,
    load_set,
)

__all__ = [
    "IMAGE_SUFFIXES", "NOT_A_DIAGRAM", "REFERENCE_MAX_BYTES", "REFERENCE_SUFFIXES", "SIDES", "UNAVAILABLE",
    "EvalItem", "Evaluation", "LoadedSet", "SetError", "SetItem", "item_row", "load", "load_set", "new_evaluation",
    "run_evaluation", "save_header", "save_item", "save_new", "score_item", "side_label", "stored_image", "summarize",
    "summary_lines", "to_jsonl", "to_markdown",
]
