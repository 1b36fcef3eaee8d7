"""Figure 5, A/B side by side: the wall time of two adapters streamed side by side ÷ one alone (worker) beside
in-process A then B, and on CPU the same with ``CPU_WEIGHT_LAYOUT=natural``."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..report import Row
from ..stats import summarize
from ..worker import WorkerClient
from .measure import interleave, ratio_row, threaded
from .target import Run, Target


def figure5(run: Run, t: Target) -> list[Row]:
    o = run.options
    req = t.request(o.tokens)
    ip = t.baseline()
    ca, cb = t.client("bench-a"), t.client("bench-b")
    texts: dict[str, list[str]] = {"solo-a": [], "solo-b": [], "pair-a": [], "pair-b": [], "ip-a": [], "ip-b": []}

    def solo(conn: WorkerClient, key: str) -> float:
        trial = conn.generate(req)
        texts[key].append(trial.text)
        return trial.end_s

    def pair(conn_a: WorkerClient, conn_b: WorkerClient, key: str) -> float:
        """Both adapters streamed side by side; their texts under ``key``-a and ``key``-b."""
        wall, (a, b) = threaded([lambda: conn_a.generate(req), lambda: conn_b.generate(req)])
        texts[f"{key}-a"].append(a.text)
        texts[f"{key}-b"].append(b.text)
        return wall

    def ip_solo(name: str, key: str) -> float:
        trial = ip.generate(req, peft=True, adapter=name)
        texts[key].append(trial.text)
        return trial.end_s

    def ip_serial() -> float:
        started = time.perf_counter()
        ip.generate(req, peft=True, adapter="bench-a")
        ip.generate(req, peft=True, adapter="bench-b")
        return time.perf_counter() - started

    subjects: dict[str, Callable[[], float]] = {}
    natural = o.device == "cpu"  # CPU_WEIGHT_LAYOUT only matters there
    if natural:
        alt = t.alternative_worker({"CPU_WEIGHT_LAYOUT": "natural"})
        na, nb = t.client("bench-a", worker=alt), t.client("bench-b", worker=alt)
        texts.update({"nat-a": [], "nat-b": [], "nat-pair-a": [], "nat-pair-b": []})
        subjects = {"natural solo a": lambda: solo(na, "nat-a"), "natural solo b": lambda: solo(nb, "nat-b"),
                    "natural pair": lambda: pair(na, nb, "nat-pair")}
    previous = t.previous_worker()  # with --compare-ref: the previous worker's pair, in the same trials
    if previous is not None:
        pa, pb = t.client("bench-a", worker=previous), t.client("bench-b", worker=previous)
        texts.update({"prev-pair-a": [], "prev-pair-b": []})
        subjects["previous pair"] = lambda: pair(pa, pb, "prev-pair")
    trials = interleave(run, o.trials, {
        **subjects,
        "worker solo a": lambda: solo(ca, "solo-a"),
        "worker solo b": lambda: solo(cb, "solo-b"),
        "worker pair": lambda: pair(ca, cb, "pair"),
        "in-process solo a": lambda: ip_solo("bench-a", "ip-a"),
        "in-process solo b": lambda: ip_solo("bench-b", "ip-b"),
        "in-process a then b": ip_serial,
    }, f"figure 5, {t.label}")
    w_ratio = [p / ((a + b) / 2) for p, a, b in zip(trials["worker pair"], trials["worker solo a"],
                                                   trials["worker solo b"])]
    ip_ratio = [p / ((a + b) / 2) for p, a, b in zip(trials["in-process a then b"], trials["in-process solo a"],
                                                    trials["in-process solo b"])]
    clean = all(x == texts["solo-a"][0] for x in texts["pair-a"]) and all(
        x == texts["solo-b"][0] for x in texts["pair-b"])
    matches = texts["solo-a"][0] == texts["ip-a"][0] and texts["solo-b"][0] == texts["ip-b"][0]
    note = ("side-by-side outputs identical to solo" if clean else "side-by-side outputs DIFFER from solo") + (
        ", and to in-process" if matches else ", differ from in-process") + (
        "; the worker has run pairs in its warm-up: the steady state of a worker serving several clients")
    if not clean:
        run.note(f"figure 5, {t.label}: two adapters streamed side by side do not reproduce their solo outputs")
    s = summarize(w_ratio)
    applies = t.size == "mid"
    rows = [
        Row(5, "A/B: wall time of two adapters streamed side by side ÷ one alone (worker); baseline: in-process "
            "A then B ÷ one", t.label, s, "×", s, summarize(ip_ratio), "×", note=note,
            target="≤ 1.3" if applies else None, met=(s.median <= 1.3) if applies and s else None),
        ratio_row(5, "A/B: wall time of the worker's side-by-side pair ÷ in-process A then B", t.label,
                  trials["worker pair"], trials["in-process a then b"], "s"),
    ]
    if previous is not None:
        ref = o.compare_ref
        same = texts["prev-pair-a"] == texts["pair-a"] and texts["prev-pair-b"] == texts["pair-b"]
        rows.append(ratio_row(
            5, f"A/B: wall time of the side-by-side pair, previous worker ({ref}) ÷ worker (speed)", t.label,
            trials["previous pair"], trials["worker pair"], "s", target="≥ 0.98" if applies else None,
            check=lambda r: r >= 0.98,
            note="outputs identical to the previous worker's" if same else "outputs DIFFER from the previous worker's"))
    if natural:
        n_ratio = [p / ((a + b) / 2) for p, a, b in zip(trials["natural pair"], trials["natural solo a"],
                                                       trials["natural solo b"])]
        same = all(x == texts["solo-a"][0] for x in texts["nat-a"] + texts["nat-pair-a"]) and all(
            x == texts["solo-b"][0] for x in texts["nat-b"] + texts["nat-pair-b"])
        if not same:
            run.note(f"figure 5, {t.label}: CPU_WEIGHT_LAYOUT=natural writes other text than the default layout")
        n = summarize(n_ratio)
        rows += [
            Row(5, "A/B with CPU_WEIGHT_LAYOUT=natural (a CPU box serving A/B pairs): pair ÷ one alone; baseline: "
                "the same with the default layout", t.label, n, "×", n, s, "×",
                note=("outputs identical to the default layout's" if same else "outputs DIFFER from the default "
                      "layout's"), target="≤ 1.3" if applies else None,
                met=(n.median <= 1.3) if applies and n else None),
            ratio_row(5, "one request alone: CPU_WEIGHT_LAYOUT=natural ÷ default layout (wall time)", t.label,
                      [a + b for a, b in zip(trials["natural solo a"], trials["natural solo b"])],
                      [a + b for a, b in zip(trials["worker solo a"], trials["worker solo b"])], "s"),
        ]
    return rows
