"""Figure 8, Ray Serve overhead: a front holding no model and one Ray Serve replica beside the in-process worker,
1 and 8 clients: aggregate tokens/s, time to first text piece, the front's CPU time per streamed token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..report import Row
from ..stats import summarize
from ..worker import RayDeployment, WorkerConfig, WorkerProcess
from .measure import delta_row, interleave, ratio_row, threaded
from .target import MIX, Run, Target, say


def figure8(run: Run, t: Target) -> list[Row]:
    """The Ray path (a front holding no model → one Ray Serve replica with every core) beside the in-process worker,
    through the same WebSocket protocol: 1 client, then 8 clients on a mix of adapters and the base. Only one of
    the two serves at a time (trials interleaved); both have the same engine, batch rows and cores, so the ratio is
    the cost of the hop (front → handle → replica → stream back)."""
    o = run.options
    req = t.request(o.concurrency_tokens)
    t.stop_worker()
    local = t.worker()
    config = WorkerConfig(t.model_dir, device=o.device, dtype=t.dtype, store_dir=t.store_dir(), max_loaded_adapters=8,
                          max_batch_rows=o.max_batch_rows)
    say(f"figure 8, {t.label}: starting a local Ray cluster with one replica")
    deployment = RayDeployment(config, run.logs / f"ray-{t.model_dir.name}.log", run.tmp / "ray").start()
    assert deployment.address is not None
    front_config = WorkerConfig(t.model_dir, device=o.device, dtype=t.dtype, store_dir=t.store_dir(),
                                max_loaded_adapters=8,
                                env={"INFERENCE_ENGINE": "ray", "RAY_ADDRESS": deployment.address,
                                     "RAY_APP_NAME": "bench", "RAY_AUTH_MODE": "disabled"})
    front = WorkerProcess(front_config, run.logs / f"ray-front-{t.model_dir.name}.log")
    rows: list[Row] = []
    try:
        front.start()
        clients = 8
        paths = {"in-process": local, "ray": front}
        conns = {name: [t.client(MIX[i % len(MIX)], worker=w) for i in range(clients)] for name, w in paths.items()}
        out: dict[str, dict[str, list[Any]]] = {
            f"{name} {c}": {"rate": [], "ttft": [], "texts": [], "tokens": []} for name in paths for c in (1, clients)}

        def round_of(name: str, c: int) -> Callable[[], None]:
            def body() -> None:
                wall, results = threaded([
                    (lambda i=i: [conns[name][i].generate(req) for _ in range(o.requests_per_client)])  # type: ignore[misc]
                    for i in range(c)])
                record = out[f"{name} {c}"]
                tokens = sum(x.tokens for trials in results for x in trials)
                record["rate"].append(tokens / wall)
                record["tokens"].append(tokens)
                record["ttft"].extend(x.ttft_piece_s for trials in results for x in trials)
                record["texts"].extend((MIX[i % len(MIX)], x.text) for i, trials in enumerate(results) for x in trials)
            return body

        subjects = {f"{name} {c}": round_of(name, c) for c in (1, clients) for name in paths}
        import psutil

        assert front.proc is not None
        front_process = psutil.Process(front.proc.pid)
        cpu = {"s": 0.0, "tokens": 0}
        for key in list(subjects):
            if key.startswith("ray"):
                def counted(body: Callable[[], None] = subjects[key], key: str = key) -> None:
                    before, rounds = front_process.cpu_times(), len(out[key]["tokens"])
                    body()
                    after = front_process.cpu_times()
                    cpu["s"] += (after.user - before.user) + (after.system - before.system)
                    cpu["tokens"] += sum(out[key]["tokens"][rounds:])
                subjects[key] = counted
        interleave(run, o.concurrency_trials, subjects, f"figure 8, {t.label}")
        for c in (1, clients):
            ray_out, local_out = out[f"ray {c}"], out[f"in-process {c}"]
            expected = dict(local_out["texts"])
            mismatched = sum(1 for a, text in ray_out["texts"] if expected.get(a, text) != text)
            same = ("outputs identical to the in-process worker per adapter" if not mismatched
                    else f"{mismatched}/{len(ray_out['texts'])} outputs differ from the in-process worker")
            if mismatched:
                run.note(f"figure 8, {t.label}, {c} clients: {same}")
            who = f"{c} client{'s' if c > 1 else ''} × {o.requests_per_client} requests"
            rows.append(ratio_row(8, f"Ray Serve, {who}: aggregate tokens/s, Ray path (front → 1 replica) ÷ "
                                  "in-process worker", t.label, ray_out["rate"], local_out["rate"], "tok/s",
                                  note=f"{same}; {o.concurrency_tokens} tokens per request"))
            ray_ttft = sorted(x for x in ray_out["ttft"] if x is not None)
            local_ttft = sorted(x for x in local_out["ttft"] if x is not None)
            rows.append(delta_row(8, f"Ray Serve, {who}: time to first text piece at the client, Ray path − "
                                  "in-process worker (requests paired by rank)", t.label, ray_ttft, local_ttft))
        if cpu["tokens"]:
            per_token_ms = cpu["s"] * 1000 / cpu["tokens"]
            rows.append(Row(8, "Ray front: CPU time of the front process per streamed token (every Ray round; "
                            "bounds what one front core can stream)", t.label, summarize([per_token_ms]), "ms",
                            note=f"{cpu['tokens']} tokens, {cpu['s']:.1f} CPU s; one core streams at most "
                            f"~{1000 / per_token_ms:.0f} tokens/s" if per_token_ms else ""))
    finally:
        front.stop()
        deployment.stop()
        t.stop_worker()
    return rows
