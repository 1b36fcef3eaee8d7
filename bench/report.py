"""One results table per run: rows, machine details, Markdown and JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .stats import Summary

FIGURES = {
    1: "streaming overhead",
    2: "LoRA cost",
    3: "hot-swap and cold load",
    4: "concurrency",
    5: "A/B side by side",
    6: "memory",
    7: "vLLM engine",
    8: "Ray Serve overhead",
    9: "HTTP (SSE) beside WebSocket",
}
# 7 needs the vLLM venv, 8 starts a Ray cluster, 9 compares the worker's two protocols: asked for by number
DEFAULT_FIGURES = (1, 2, 3, 4, 5, 6)


@dataclass
class Row:
    """One line of the table: a subject measured beside a baseline, and the comparison of the two.

    ``result`` is a ratio (``×``), a difference (``ms``) or a plain value (``s``, ``ms``); ``target`` says what
    it should be and ``met`` whether its median is (None: no target, or the target does not apply here).
    """

    figure: int
    measurement: str
    model: str
    result: Summary | None
    result_unit: str
    subject: Summary | None = None
    baseline: Summary | None = None
    unit: str = ""
    target: str | None = None
    met: bool | None = None
    note: str = ""
    subject_text: str | None = None  # a cell written out (percentiles, before → after) instead of a summary
    baseline_text: str | None = None
    result_text: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure, "figure_name": FIGURES.get(self.figure), "measurement": self.measurement,
            "model": self.model, "unit": self.unit, "result_unit": self.result_unit,
            "subject": self.subject.to_json() if self.subject else None,
            "baseline": self.baseline.to_json() if self.baseline else None,
            "result": self.result.to_json() if self.result else None,
            "target": self.target, "met": self.met, "note": self.note,
            "cells": {"subject": self.subject_cell(), "baseline": self.baseline_cell(), "result": self.result_cell()},
            **({"data": self.data} if self.data else {}),
        }

    def subject_cell(self) -> str:
        return self.subject_text if self.subject_text is not None else fmt_summary(self.subject, self.unit)

    def baseline_cell(self) -> str:
        return self.baseline_text if self.baseline_text is not None else fmt_summary(self.baseline, self.unit)

    def result_cell(self) -> str:
        return self.result_text if self.result_text is not None else fmt_summary(self.result, self.result_unit,
                                                                                 signed=self.result_unit == "ms Δ")


def fmt_number(x: float, unit: str = "", signed: bool = False) -> str:
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if unit == "×":
        text = f"{x:.3f}" if a < 10 else f"{x:.1f}"
    elif a >= 100:
        text = f"{x:.0f}"
    elif a >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.2f}"
    if signed and x > 0:
        text = "+" + text
    return text


def fmt_summary(s: Summary | None, unit: str, signed: bool = False) -> str:
    if s is None:
        return "—"
    u = {"×": "×", "ms Δ": " ms"}.get(unit, f" {unit}" if unit else "")
    med = fmt_number(s.median, unit, signed)
    if s.n == 1:
        return f"{med}{u}"
    return f"{med}{u} [{fmt_number(s.lo, unit, signed)}–{fmt_number(s.hi, unit, signed)}]"


def machine_info(device: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import websockets

    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "websockets": websockets.__version__,
        "device": device,
        "device_name": _device_name(device),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average_start": _loadavg(),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
    }
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        return None


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return str(torch.cuda.get_device_name(0))
    return f"CPU: {_cpu_model()}"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _met_cell(row: Row) -> str:
    if row.target is None:
        return ""
    if row.met is None:
        return "n/a"
    return "yes" if row.met else "**no**"


def render_markdown(rows: list[Row], machine: dict[str, Any], settings: dict[str, Any],
                    notes: list[str] | None = None) -> str:
    lines = ["# Benchmark results", ""]
    m = machine
    lines.append(
        f"{m['date']} · {m['device_name']} · {m['cpu_cores']} cores · {m['ram_gib']} GiB RAM · "
        f"torch {m['torch']} · transformers {m['transformers']} · peft {m['peft']} · websockets {m['websockets']} · "
        f"Python {m['python']} · commit {str(m['git_commit'])[:12]}{' (dirty)' if m['git_dirty'] else ''} · "
        f"load average {m.get('load_average_start')} → {m.get('load_average_end')}"
    )
    lines.append("")
    lines.append(f"`{m['command']}` — " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    lines.append("")
    lines.append("Subject and baseline: median [min–max] over interleaved trials. Result: the median of the "
                 "per-trial ratios (×) or differences (ms Δ), [min–max] of them.")
    lines.append("")
    lines.append("| # | measurement | model | subject | baseline | result | target | met |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        measurement = r.measurement + (f" — {r.note}" if r.note else "")
        cells = [str(r.figure), measurement, r.model, r.subject_cell(), r.baseline_cell(), r.result_cell(),
                 r.target or "", _met_cell(r)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, rows: list[Row], machine: dict[str, Any], settings: dict[str, Any],
                  notes: list[str], extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    js = out_dir / "results.json"
    md.write_text(render_markdown(rows, machine, settings, notes))
    payload = {"machine": machine, "settings": settings, "notes": notes, "rows": [r.to_json() for r in rows],
               "figures": {str(k): v for k, v in FIGURES.items()}, **(extra or {})}
    js.write_text(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False, default=_jsonable) + "\n")
    return md, js


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
