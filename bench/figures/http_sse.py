"""Figure 9, streaming over HTTP beside the WebSocket: the same greedy request through the worker's OpenAI-compatible
``POST /v1/chat/completions`` (``stream: true``, server-sent events) and through its WebSocket protocol, on the same
worker process, 1 client and 8 concurrent clients; trials interleaved, so only one protocol serves at a time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..common import Trial
from ..report import Row
from ..worker import SseClient, WorkerClient
from .measure import delta_row, interleave, ratio_row, threaded
from .target import Run, Target

CLIENTS = 8
PROTOCOLS = ("WebSocket", "HTTP-SSE")


def decode_tps(trial: Trial) -> float | None:
    """Decode speed as the client sees it: tokens after the first ÷ time from the first text piece to the end of the
    stream (the worker streams each complete character, so its first piece comes with the first token; the same
    output through both protocols has the same first piece either way)."""
    return trial.decode_tps_piece(1)


def figure9(run: Run, t: Target) -> list[Row]:
    """One client: decode tokens/s and time to first text piece, HTTP-SSE ÷ (−) WebSocket, per request (``--tokens``
    tokens). Eight clients released together, each sending ``--requests-per-client`` requests in turn
    (``--concurrency-tokens`` tokens): aggregate tokens/s, and the median time to first text piece of the round's
    requests. Every client is the base model, and both protocols' clients parse each event's JSON where it arrives.
    """
    o = run.options
    t.stop_worker()
    worker = t.worker(http_api=True)
    ws = [t.client(worker=worker) for _ in range(CLIENTS)]
    sse = [t.sse_client(worker) for _ in range(CLIENTS)]
    conns: dict[str, Sequence[WorkerClient | SseClient]] = {"WebSocket": ws, "HTTP-SSE": sse}
    one, many = t.request(o.tokens), t.request(o.concurrency_tokens)
    singles: dict[str, list[Trial]] = {p: [] for p in PROTOCOLS}
    rounds: dict[str, dict[str, list[float]]] = {
        p: {"rate": [], "ttft": [], "worker_cpu_ms": [], "client_cpu_ms": []} for p in PROTOCOLS}
    texts: dict[str, list[list[str]]] = {p: [] for p in PROTOCOLS}  # each round's texts, client by client
    reused: list[bool] = []  # the HTTP requests of the 8-client rounds: on a kept-alive connection?

    def single(protocol: str) -> Callable[[], None]:
        def body() -> None:
            singles[protocol].append(conns[protocol][0].generate(one))
        return body

    import psutil

    assert worker.proc is not None
    worker_process = psutil.Process(worker.proc.pid)

    def cpu_s(times: Any) -> float:
        return float(times.user + times.system)

    def burst(protocol: str, record: bool = True) -> Callable[[], None]:
        def body() -> None:
            clients = conns[protocol]
            worker_before, client_before = cpu_s(worker_process.cpu_times()), time.process_time()
            wall, results = threaded([
                (lambda i=i: [clients[i].generate(many) for _ in range(o.requests_per_client)])  # type: ignore[misc]
                for i in range(CLIENTS)])
            worker_cpu = cpu_s(worker_process.cpu_times()) - worker_before
            client_cpu = time.process_time() - client_before
            if not record:
                return
            trials = [x for per_client in results for x in per_client]
            tokens = sum(x.tokens for x in trials)
            rounds[protocol]["rate"].append(tokens / wall)
            rounds[protocol]["worker_cpu_ms"].append(worker_cpu * 1000 / tokens)
            rounds[protocol]["client_cpu_ms"].append(client_cpu * 1000 / tokens)
            ttfts = [x.ttft_piece_s for x in trials if x.ttft_piece_s is not None]
            rounds[protocol]["ttft"].append(statistics.median(ttfts) if ttfts else float("nan"))
            texts[protocol].append([x.text for x in trials])
            if protocol == "HTTP-SSE":
                reused.extend(bool(x.extra.get("reused")) for x in trials)
        return body

    # One client, then 8: each in interleaved trials (the order reversed every trial) after untimed warm-up runs.
    # One client's HTTP requests follow each other within a few seconds: each goes on the connection kept alive from
    # the one before, as a client's pooled connection and the WebSocket's one connection would. In the 8-client
    # rounds (tens of seconds each) each client's first request opens a connection, the next ones reuse it.
    for _ in range(o.warmup):
        for p in PROTOCOLS:
            conns[p][0].generate(one)
    interleave(run, o.trials, {f"{p} 1 client": single(p) for p in PROTOCOLS}, f"figure 9, {t.label}, 1 client",
               warmup=0)
    for p in PROTOCOLS:
        burst(p, record=False)()
    interleave(run, o.trials, {f"{p} {CLIENTS} clients": burst(p) for p in PROTOCOLS},
               f"figure 9, {t.label}, {CLIENTS} clients", warmup=0)

    w1, h1 = singles["WebSocket"], singles["HTTP-SSE"]
    same1 = _compare([[x.text] for x in w1], [[x.text] for x in h1])
    same8 = _compare(texts["WebSocket"], texts["HTTP-SSE"])
    for what, c in ((same1, 1), (same8, CLIENTS)):
        if not what.startswith("outputs identical"):
            run.note(f"figure 9, {t.label}, {c} client{'s' if c > 1 else ''}: HTTP-SSE and WebSocket {what}")
    applies = t.size != "tiny"
    who = f"{CLIENTS} clients × {o.requests_per_client} requests"
    kept1 = sum(1 for x in h1 if x.extra.get("reused"))
    tokens1 = (f"{w1[0].tokens} tokens, prompt {w1[0].prompt_tokens}/{h1[0].prompt_tokens} tokens, {same1}; "
               f"HTTP: {kept1}/{len(h1)} requests on a kept-alive connection")
    tokens8 = (f"{o.concurrency_tokens} tokens per request, {same8}; HTTP: {sum(reused)}/{len(reused)} requests on a "
               "kept-alive connection")
    rows = [
        ratio_row(9, "1 client, decode tokens/s (after the first text piece): HTTP-SSE ÷ WebSocket, same worker",
                  t.label, [decode_tps(x) for x in h1], [decode_tps(x) for x in w1], "tok/s",
                  target="≥ 0.97" if applies else None, check=lambda r: r >= 0.97, note=tokens1),
        ratio_row(9, f"{who}: aggregate tokens/s, HTTP-SSE ÷ WebSocket, same worker", t.label,
                  rounds["HTTP-SSE"]["rate"], rounds["WebSocket"]["rate"], "tok/s",
                  target="≥ 0.97" if applies else None, check=lambda r: r >= 0.97, note=tokens8),
        delta_row(9, "1 client, time to first text piece at the client: HTTP-SSE − WebSocket", t.label,
                  [x.ttft_piece_s for x in h1], [x.ttft_piece_s for x in w1],
                  target="≤ +10 ms" if applies else None, check=lambda d: d <= 10.0),
        delta_row(9, f"{who}: time to first text piece at the client (median of each round's requests), "
                  "HTTP-SSE − WebSocket", t.label, _finite(rounds["HTTP-SSE"]["ttft"]),
                  _finite(rounds["WebSocket"]["ttft"]),
                  target="≤ +10 ms" if applies else None, check=lambda d: d <= 10.0),
    ]
    h_client, w_client = (statistics.median(rounds[p]["client_cpu_ms"]) for p in PROTOCOLS[::-1])
    rows.append(ratio_row(9, f"{who}: CPU time per streamed token of the worker process (model and protocol), "
                          "HTTP-SSE ÷ WebSocket", t.label, rounds["HTTP-SSE"]["worker_cpu_ms"],
                          rounds["WebSocket"]["worker_cpu_ms"], "ms",
                          note=f"the clients (the benchmark's process): {h_client:.2f} ms per token over HTTP-SSE, "
                          f"{w_client:.2f} ms over WebSocket"))
    rows[0].data = {"websocket_end_s": [x.end_s for x in w1], "http_end_s": [x.end_s for x in h1],
                    "websocket_server_decode_tps": [x.decode_tps_token for x in w1]}
    t.stop_worker()  # the next figures use a worker with the default settings
    return rows


def _finite(values: Sequence[float]) -> list[float | None]:
    return [x if x == x else None for x in values]


def _compare(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> str:
    """Whether each trial's outputs through one protocol equal the other's (client by client, request by request)."""
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    mismatched = sum(1 for x, y in pairs if x != y)
    if mismatched:
        return f"outputs differ in {mismatched}/{len(pairs)} requests"
    return f"outputs identical ({len(pairs)} requests)"
