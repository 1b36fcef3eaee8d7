"""Running an evaluation against the worker: the items that need it, in order, A and B of an item together.

Both requests of an item go out together on one connection, so the worker runs them in the same batch. A worker that
went away stops the evaluation there (resume it later) instead of failing every remaining item.
"""

from __future__ import annotations

from collections.abc import Callable

from ..client import WorkerClient, user_message
from ..history import Output, now_iso
from ..runs import Event, run_outputs
from .evaluation import SIDES, EvalItem, Evaluation, score_item

# Errors that say the worker itself is gone: the evaluation stops there instead of failing every remaining item.
UNAVAILABLE = {"unreachable", "timeout", "disconnected", "shutting_down", "loading", "unauthorized", "bad_url",
               "handshake_failed"}


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
