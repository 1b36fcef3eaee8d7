"""Picking each row's next token with that row's own sampling parameters and random stream.

Greedy rows are one ``argmax`` over all of them. A sampling row applies, in transformers' order, the repetition
penalty, the temperature, top-k and top-p, then draws from its own seeded ``torch.Generator``: the same seed gives
the same text whatever else is in the batch. The arithmetic runs in float64 with overflow clamped, so every value
the protocol accepts works (a temperature of 1e-300 or a repetition penalty of 1e-300 sample like the limit they
approach instead of producing NaN).
"""

from __future__ import annotations

import torch

from ..base import SamplingParams

_BIG = torch.finfo(torch.float64).max / 4  # ±inf after scaling become ±this: still ordered, never NaN


class RowSampler:
    def __init__(self, params: SamplingParams, device: torch.device | str) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed)
        penalty = params.repetition_penalty
        self.penalty = penalty if penalty is not None and penalty != 1.0 else None
        self.top_k = params.top_k or None
        self.top_p = params.top_p if params.top_p is not None and params.top_p < 1.0 else None

    @property
    def needs_history(self) -> bool:
        return self.penalty is not None

    @property
    def plain_greedy(self) -> bool:
        """The token is the row's ``argmax`` (the batch computes those all at once)."""
        return self.penalty is None and self.generator is None

    def pick(self, logits: torch.Tensor, history: torch.Tensor | None) -> int:
        """The next token of one row from its finite logits (``[vocab]``) and, for the repetition penalty, the
        row's token ids so far (prompt included, as transformers does)."""
        if self.plain_greedy:
            return int(logits.argmax())
        scores = logits.to(torch.float64)
        if self.penalty is not None and history is not None and history.numel():
            seen = scores.gather(0, history)
            seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
            scores = scores.scatter(0, history, seen)
        if self.generator is None:  # greedy with a repetition penalty
            return int(_finite(scores).argmax())
        # Shifted so that the best token is 0: dividing by a vanishing temperature then leaves it alone on top
        # (every other score goes to -inf, clamped) instead of turning many scores into equal +inf.
        scores = _finite((scores - scores.max()) / self.params.temperature)
        if self.top_k is not None and self.top_k < scores.numel():
            kth = torch.topk(scores, self.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p is not None:
            ordered, order = torch.sort(scores)  # ascending, as transformers' TopPLogitsWarper
            cumulative = ordered.softmax(-1).cumsum(-1)
            remove = cumulative <= 1 - self.top_p
            remove[-1] = False  # keep at least the most likely token
            scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _finite(scores: torch.Tensor) -> torch.Tensor:
    return scores.nan_to_num(nan=float("-inf"), posinf=_BIG, neginf=-_BIG)
