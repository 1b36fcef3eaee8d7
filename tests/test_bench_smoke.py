"""Smoke test of the benchmark tool (``python -m bench --smoke``): it runs every figure end to end on the tiny model
and writes a table with every figure in it. No timing is asserted: the numbers of a smoke run mean nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


@pytest.mark.slow
def test_bench_smoke_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "| # | measurement |" in result.stdout  # the table is printed

    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert {r["figure"] for r in rows} == {1, 2, 3, 4, 5, 6}
    assert not [r for r in rows if r["measurement"].startswith("FAILED")]
    for row in rows:
        assert row["result"] is not None, row["measurement"]
        assert all(math.isfinite(x) for x in _numbers(row["result"])), row
        for side in ("subject", "baseline"):
            if row[side] is not None:
                assert all(math.isfinite(x) for x in _numbers(row[side])), row
    measurements = " ".join(r["measurement"] for r in rows)
    for expected in ("decode tokens/s: worker over WebSocket", "lm_head fix", "hot swap", "cold load",
                     "concurrency, 2 clients", "A/B", "memory: RSS"):
        assert expected in measurements
    machine = data["machine"]
    for key in ("cpu", "cpu_cores", "ram_gib", "torch", "transformers", "peft", "device_name", "date", "git_commit"):
        assert machine.get(key), key

    markdown = (out / "results.md").read_text()
    assert markdown.count("\n| ") >= len(rows) + 1  # header + one line per row
    for figure in range(1, 7):
        assert f"\n| {figure} | " in markdown
