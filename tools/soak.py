"""Soak / load test: N clients with mixed adapters for a bounded time against a worker on loopback.

Counts every generate sent, every terminal message received (done or error, by code), tokens, and samples the
worker's RSS over time. A request is *lost* when it never gets a terminal message; the target is zero lost
requests and a flat RSS after warm-up.

    python -m tools.soak --duration 600 --clients 8            # starts the demo worker in-process
    python -m tools.soak --url ws://host:8765 --duration 60    # an existing worker (RSS from its /proc if local)

Loopback only: it refuses URLs that are not 127.0.0.1/localhost unless --allow-remote is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playground.client import BadFrame, WorkerClient, WorkerError, user_message
from wire.protocol import Done

ADAPTERS = ["demo-a", "demo-b", None]
PROMPTS = ["Describe the process diagram.", "List the roles as a Markdown table.", "What happens after approval?"]


@dataclass
class SoakReport:
    duration_s: float
    clients: int
    sent: int = 0
    done: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    invalid_replies: int = 0
    client_failures: list[str] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, RSS MiB)

    @property
    def terminals(self) -> int:
        return self.done + sum(self.errors.values())

    @property
    def lost(self) -> int:
        return self.sent - self.terminals

    def rss_growth_after_warmup(self, warmup_fraction: float = 0.25) -> float | None:
        """RSS at the end ÷ RSS just after warm-up (median of a few samples each)."""
        if len(self.rss_mb) < 8:
            return None
        start = int(len(self.rss_mb) * warmup_fraction)
        head = [m for _, m in self.rss_mb[start : start + 3]]
        tail = [m for _, m in self.rss_mb[-3:]]
        return statistics.median(tail) / statistics.median(head)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(terminals=self.terminals, lost=self.lost, rss_growth=self.rss_growth_after_warmup(),
                 errors=dict(self.errors), finish_reasons=dict(self.finish_reasons))
        return d


async def _client(url: str, index: int, deadline: float, report: SoakReport, max_tokens: int, rng: random.Random,
                  cancel_rate: float) -> None:
    adapter = ADAPTERS[index % len(ADAPTERS)]
    n = 0
    try:
        async with WorkerClient(url, open_timeout=30, reply_timeout=120) as client:
            if adapter is not None:
                await client.load_adapter(adapter)
            while time.monotonic() < deadline:
                n += 1
                sid = f"c{index}-{n}"
                params: dict[str, Any] = {"session_id": sid, "max_tokens": rng.randint(4, max_tokens),
                                          "temperature": rng.choice([0, 0.7]), "seed": rng.randint(0, 1000)}
                if rng.random() < 0.2:  # a per-request adapter now and then
                    params["adapter"] = rng.choice(ADAPTERS)
                cancel = rng.random() < cancel_rate
                stream = client.generate([user_message(rng.choice(PROMPTS))], **params)
                report.sent += 1
                try:
                    while True:
                        item = await asyncio.wait_for(anext(stream), timeout=120)
                        if isinstance(item, Done):
                            report.done += 1
                            report.finish_reasons[item.finish_reason] += 1
                            break
                        report.tokens += 1
                        if cancel:
                            cancel = False
                            await client.cancel(sid)
                except WorkerError as exc:  # the request's terminal error
                    report.errors[exc.code] += 1
                except BadFrame:  # a reply outside the protocol ends the request (it counts as lost too)
                    report.invalid_replies += 1
                finally:
                    await stream.aclose()
    except Exception as exc:  # a client that dies loses its in-flight request: that shows up as lost
        report.client_failures.append(f"client {index}: {type(exc).__name__}: {exc}")


async def _sample_rss(pid: int | None, started: float, deadline: float, report: SoakReport, every: float) -> None:
    import psutil

    proc = psutil.Process(pid)
    while time.monotonic() < deadline:
        report.rss_mb.append((round(time.monotonic() - started, 1), proc.memory_info().rss / 2**20))
        await asyncio.sleep(every)


async def soak(url: str, *, duration_s: float, clients: int = 8, max_tokens: int = 48, seed: int = 0,
               pid: int | None = None, cancel_rate: float = 0.1, rss_every_s: float = 1.0) -> SoakReport:
    report = SoakReport(duration_s=duration_s, clients=clients)
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + duration_s
    tasks = [_client(url, i, deadline, report, max_tokens, random.Random(rng.random()), cancel_rate)
             for i in range(clients)]
    sampler = asyncio.ensure_future(_sample_rss(pid, started, deadline, report, rss_every_s))
    await asyncio.gather(*tasks)
    sampler.cancel()
    return report


def format_report(report: SoakReport) -> str:
    growth = report.rss_growth_after_warmup()
    rss = [m for _, m in report.rss_mb]
    lines = [
        f"soak: {report.clients} clients for {report.duration_s:.0f} s",
        f"  generate sent        {report.sent}",
        f"  terminal messages    {report.terminals}  (done {report.done}, errors {sum(report.errors.values())})",
        f"  lost requests        {report.lost}",
        f"  finish reasons       {dict(report.finish_reasons)}",
        f"  errors by code       {dict(report.errors)}",
        f"  tokens streamed      {report.tokens}",
        f"  invalid replies      {report.invalid_replies}",
        f"  RSS MiB              start {rss[0]:.0f}, max {max(rss):.0f}, end {rss[-1]:.0f}" if rss else "  RSS: n/a",
        f"  RSS after warm-up    ×{growth:.3f}" if growth else "  RSS after warm-up    (too few samples)",
    ]
    lines += [f"  client failure: {f}" for f in report.client_failures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an existing worker (default: start the demo worker in this process)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--pid", type=int, help="PID of the worker whose RSS to sample (with --url)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    args = parser.parse_args(argv)
    if args.url and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        parser.error("the soak test runs on loopback only (pass --allow-remote to override)")
    if args.url:
        report = asyncio.run(soak(args.url, duration_s=args.duration, clients=args.clients,
                                  max_tokens=args.max_tokens, pid=args.pid))
    else:
        import tempfile

        from checkpoints.demo import ensure_demo
        from inference_worker.config import Settings
        from inference_worker.embedded import EmbeddedWorker

        demo = ensure_demo(Path(tempfile.gettempdir()) / "inference-worker-soak-demo")
        settings = Settings(model_name=str(demo.model_dir), adapter_store_dir=demo.store_dir, host="127.0.0.1",
                            port=0, http_port=None, max_batch_rows=2, max_queue_size=16)
        with EmbeddedWorker(settings) as worker:
            report = asyncio.run(soak(worker.url, duration_s=args.duration, clients=args.clients,
                                      max_tokens=args.max_tokens))
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.lost == 0 and report.invalid_replies == 0 and not report.client_failures else 1


if __name__ == "__main__":
    sys.exit(main())
