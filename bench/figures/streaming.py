"""Figure 1, streaming overhead: one client's decode tokens/s and time to first token through the worker over
WebSocket beside in-process ``generate`` (and beside the worker of ``--compare-ref``, if given)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..report import Row
from .measure import attr, delta_row, interleave, ratio_row, same_outputs
from .target import Run, Target


def figure1(run: Run, t: Target) -> list[Row]:
    o = run.options
    req = t.request(o.tokens)
    ip = t.baseline()
    client = t.client()
    subjects: dict[str, Callable[[], Any]] = {
        "worker": lambda: client.generate(req),
        "in-process": lambda: ip.generate(req),
    }
    previous = t.previous_worker()
    if previous is not None:
        prev_client = previous.client()
        t._clients.append(prev_client)
        subjects["previous worker"] = lambda: prev_client.generate(req)
    trials = interleave(run, o.trials, subjects, f"figure 1, {t.label}")
    w, b = trials["worker"], trials["in-process"]
    same, what = same_outputs(w, b)
    tokens = f"{w[0].tokens} tokens, prompt {w[0].prompt_tokens}/{b[0].prompt_tokens} tokens, {what}"
    ks = [x.extra.get("first_piece_token") for x in b]
    if not same:
        run.note(f"figure 1, {t.label}: worker and in-process outputs differ ({what}); the comparison is still of "
                 "the same request, but not of the same tokens")
    applies = t.size != "tiny"
    # The first text piece comes after the same token in both (identical outputs): decode speed counts from there.
    # (only with at least 4 tokens after the first piece: fewer do not time a decode speed)
    usable = [k if same and k is not None and x.tokens - k >= 4 else None for x, k in zip(b, ks)]
    w_tps = [x.decode_tps_piece(k) for x, k in zip(w, usable)]
    b_tps = [x.decode_tps_piece(k) for x, k in zip(b, usable)]
    w_ttft, b_ttft = attr(w, "ttft_piece_s"), attr(b, "ttft_piece_s")
    piece_timed = same and any(w_tps)
    if not piece_timed:
        # different texts, or the streamer released (nearly) all the text at the end (the tiny model's text has
        # no spaces):
        # fall back to the timings taken where the tokens are produced (the worker's from admission)
        w_tps, b_tps = attr(w, "decode_tps_token"), attr(b, "decode_tps_token")
        w_ttft, b_ttft = attr(w, "ttft_token_s"), attr(b, "ttft_token_s")
        why = "outputs differ" if not same else "the text arrived in too few pieces"
        tokens += f"; timings taken where the tokens are produced ({why})"
    rows = [
        ratio_row(1, "decode tokens/s: worker over WebSocket ÷ in-process generate", t.label, w_tps, b_tps, "tok/s",
                  target="≥ 0.97" if applies else None, check=lambda r: r >= 0.97, note=tokens),
        delta_row(1, "time to first token: worker over WebSocket − in-process", t.label, w_ttft, b_ttft,
                  target="≤ +15 ms" if applies else None, check=lambda d: d <= 15.0),
    ]
    if previous is not None:
        pw = trials["previous worker"]
        p_same, p_what = same_outputs(w, pw)
        # The previous worker streams whole words (transformers' streamer); the new one every complete character:
        # compare both where the tokens are produced (the workers' own timings, from admission).
        p_tps, p_ttft = attr(pw, "decode_tps_token"), attr(pw, "ttft_token_s")
        n_tps, n_ttft = attr(w, "decode_tps_token"), attr(w, "ttft_token_s")
        ref = run.options.compare_ref
        note = f"previous worker: {ref}; {p_what}; timings taken where the tokens are produced"
        rows += [
            ratio_row(1, f"one client alone, decode tokens/s: worker ÷ previous worker ({ref})", t.label, n_tps,
                      p_tps, "tok/s", target="≥ 0.97" if applies else None, check=lambda r: r >= 0.97, note=note),
            ratio_row(1, f"one client alone, time to first token: previous worker ({ref}) ÷ worker (speed)", t.label,
                      p_ttft, n_ttft, "s", target="≥ 0.97" if applies else None, check=lambda r: r >= 0.97,
                      scale=1000.0),
        ]
        rows[-1].unit = "ms"
        if not p_same:
            run.note(f"figure 1, {t.label}: the worker and the previous worker ({ref}) write different texts "
                     f"({p_what})")
    for row in rows[:2]:
        row.data = {
            "tokens": [x.tokens for x in w], "first_piece_token": ks,
            "worker_server_ttft_ms": [x.ttft_token_s * 1000 if x.ttft_token_s is not None else None for x in w],
            "worker_server_decode_tps": attr(w, "decode_tps_token"),
            "in_process_token_ttft_ms": [x.ttft_token_s * 1000 if x.ttft_token_s is not None else None for x in b],
            "in_process_token_decode_tps": attr(b, "decode_tps_token"),
        }
    return rows
